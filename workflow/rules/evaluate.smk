rule evaluate_dense:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        task="results/data/tasks/{task}.json",
    output:
        "results/eval/{model}/dense/{task}.json",
    log:
        "logs/evaluate_dense/{model}/{task}.log",
    benchmark:
        "benchmarks/evaluate_dense/{model}/{task}.tsv"
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    params:
        settings=evaluation_settings,
    shell:
        "layerprune evaluate --model {input.model:q} --task-file {input.task:q} --task-name {wildcards.task:q}"
        " --model-name {wildcards.model:q} --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule evaluate_variant:
    input:
        model=variant_checkpoint,
        task="results/data/tasks/{task}.json",
    output:
        "results/eval/{model}/{method}/{ratio}/{recovery}/{task}.json",
    log:
        "logs/evaluate_variant/{model}/{method}/{ratio}/{recovery}/{task}.log",
    benchmark:
        "benchmarks/evaluate_variant/{model}/{method}/{ratio}/{recovery}/{task}.tsv"
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    params:
        settings=evaluation_settings,
    shell:
        "layerprune evaluate --model {input.model:q} --task-file {input.task:q} --task-name {wildcards.task:q}"
        " --model-name {wildcards.model:q} --method {wildcards.method:q} --ratio {wildcards.ratio:q}"
        " --recovery {wildcards.recovery:q} --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"
