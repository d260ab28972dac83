rule prune:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        scores=lambda wc: score_file(wc.model, wc.method),
    output:
        directory(shared_path("pruned/{fp}/{model}/{method}/{ratio}")),
    log:
        shared_log("prune", "{fp}/{model}/{method}/{ratio}"),
    benchmark:
        shared_benchmark("prune", "{fp}/{model}/{method}/{ratio}")
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
