EVALUATION = config["evaluation"]


rule evaluate_dense:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        task="results/data/tasks/{task}.json",
    output:
        "results/eval/{model}/dense/{task}.json",
    params:
        batch_size=EVALUATION["batch_size"],
        max_new_tokens=lambda wc: config["tasks"][wc.task]["max_new_tokens"],
        seed=SEED,
        dtype=DTYPE,
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    shell:
        "layerprune evaluate --model {input.model} --task-file {input.task} --task-name {wildcards.task}"
        " --model-name {wildcards.model} --batch-size {params.batch_size}"
        " --max-new-tokens {params.max_new_tokens} --seed {params.seed} --dtype {params.dtype}"
        " --threads {threads} --out {output}"


rule evaluate_variant:
    input:
        model=variant_checkpoint,
        task="results/data/tasks/{task}.json",
    output:
        "results/eval/{model}/{method}/{ratio}/{recovery}/{task}.json",
    params:
        batch_size=EVALUATION["batch_size"],
        max_new_tokens=lambda wc: config["tasks"][wc.task]["max_new_tokens"],
        seed=SEED,
        dtype=DTYPE,
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    shell:
        "layerprune evaluate --model {input.model} --task-file {input.task} --task-name {wildcards.task}"
        " --model-name {wildcards.model} --method {wildcards.method} --ratio {wildcards.ratio}"
        " --recovery {wildcards.recovery} --batch-size {params.batch_size}"
        " --max-new-tokens {params.max_new_tokens} --seed {params.seed} --dtype {params.dtype}"
        " --threads {threads} --out {output}"
