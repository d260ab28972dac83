rule prune:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        scores="results/scores/{model}/{method}.json",
    output:
        directory("results/pruned/{model}/{method}/{ratio}"),
    params:
        dtype=DTYPE,
    threads: job_threads("prune")
    resources:
        **job_resources("prune"),
    shell:
        "layerprune prune --model {input.model} --scores {input.scores} --ratio {wildcards.ratio}"
        " --dtype {params.dtype} --threads {threads} --out {output}"
