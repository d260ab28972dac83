rule prune:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        scores="results/scores/{model}/{method}.json",
    output:
        directory("results/pruned/{model}/{method}/{ratio}"),
    params:
        settings=PRUNE_SETTINGS,
    threads: job_threads("prune")
    resources:
        **job_resources("prune"),
    shell:
        "layerprune prune --model {input.model:q} --scores {input.scores:q} --ratio {wildcards.ratio:q}"
        " --settings {params.settings:q} --threads {threads} --out {output:q}"
