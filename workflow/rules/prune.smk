rule prune:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        scores=score_file("{model}", "{method}"),
    output:
        directory(pruned_checkpoint("{model}", "{method}", "{ratio}")),
    log:
        study_log("prune", "{model}/{method}/{ratio}"),
    benchmark:
        study_benchmark("prune", "{model}/{method}/{ratio}")
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
