rule prune:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        scores="results/scores/{model}/{method}.json",
    output:
        directory("results/pruned/{model}/{method}/{ratio}"),
    log:
        "logs/prune/{model}/{method}/{ratio}.log",
    benchmark:
        "benchmarks/prune/{model}/{method}/{ratio}.tsv"
    priority: CRITICAL_PATH_PRIORITY
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("prune")
    resources:
        **job_resources("prune"),
    params:
        settings=PRUNE_SETTINGS,
    shell:
        "layerprune prune --model {input.model:q} --scores {input.scores:q} --ratio {wildcards.ratio:q}"
        " --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"
