EVALUATION = config["evaluation"]
SANDBOX = EVALUATION["sandbox"]


def generation_flags(wildcards):
    """Per-task prompting and sampling, and the sandbox limits, as CLI flags."""
    task = config["tasks"][wildcards.task]
    flags = [
        f"--prompting {task['prompting']}",
        f"--temperature {task['temperature']}",
        f"--top-k {task['top_k']}",
        f"--top-p {task['top_p']}",
        f"--num-samples {task['num_samples']}",
        "--pass-k " + " ".join(str(k) for k in task["pass_k"]),
        f"--sandbox-timeout {SANDBOX['timeout_s']}",
        f"--sandbox-cpu {SANDBOX['cpu_s']}",
        f"--sandbox-memory-mb {SANDBOX['memory_mb']}",
        f"--sandbox-file-size-mb {SANDBOX['file_size_mb']}",
        f"--sandbox-nproc {SANDBOX['nproc']}",
    ]
    return " ".join(flags)



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
        generation=generation_flags,
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    shell:
        "layerprune evaluate --model {input.model} --task-file {input.task} --task-name {wildcards.task}"
        " --model-name {wildcards.model} --batch-size {params.batch_size}"
        " --max-new-tokens {params.max_new_tokens} --seed {params.seed} --dtype {params.dtype}"
        " {params.generation} --threads {threads} --out {output}"


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
        generation=generation_flags,
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    shell:
        "layerprune evaluate --model {input.model} --task-file {input.task} --task-name {wildcards.task}"
        " --model-name {wildcards.model} --method {wildcards.method} --ratio {wildcards.ratio}"
        " --recovery {wildcards.recovery} --batch-size {params.batch_size}"
        " --max-new-tokens {params.max_new_tokens} --seed {params.seed} --dtype {params.dtype}"
        " {params.generation} --threads {threads} --out {output}"
