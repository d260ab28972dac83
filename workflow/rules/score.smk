# Calibration-free methods (reverse, random) do not depend on the calibration
# set, so changing it re-scores only the calibrated methods. A setting reaches only
# the methods that use it: chunk_size the prefix-reusing scans (ppl, sleb),
# sleb_exclude_ends and the largest ratio sleb, whose greedy rounds stop at that
# ratio's k (so adding a larger ratio re-scores sleb, as it does iterative).
CALIBRATED_METHODS = {"bi", "angular", "angular_last", "ppl", "taylor", "sleb"}
CHUNKED_METHODS = {"ppl", "sleb"}


rule score:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        calibration=lambda wc: "results/data/calibration.jsonl" if wc.method in CALIBRATED_METHODS else [],
    output:
        "results/scores/{model}/{method}.json",
    params:
        calibration=lambda wc, input: f"--calibration {input.calibration}" if input.calibration else "",
        max_length=lambda wc: config["scoring"]["calibration"]["max_length"] if wc.method in CALIBRATED_METHODS else 0,
        batch_size=config["scoring"]["batch_size"],
        chunk_size=lambda wc: config["scoring"]["chunk_size"] if wc.method in CHUNKED_METHODS else None,
        sleb_exclude_ends=lambda wc: config["scoring"]["sleb_exclude_ends"] if wc.method == "sleb" else True,
        sleb_max_ratio=lambda wc: f"--max-ratio {max(config['pruning']['ratios']):g}" if wc.method == "sleb" else "",
        seed=SEED,
        dtype=DTYPE,
    threads: job_threads("score")
    resources:
        **job_resources("score"),
    shell:
        "layerprune score --model {input.model} --method {wildcards.method} {params.calibration}"
        " --max-length {params.max_length} --batch-size {params.batch_size} --chunk-size {params.chunk_size}"
        " --sleb-exclude-ends {params.sleb_exclude_ends} {params.sleb_max_ratio} --seed {params.seed}"
        " --dtype {params.dtype} --threads {threads} --out {output}"


# The iterative method (arXiv 2602.01997) evaluates candidate removals on the
# prepared probe tasks. It has a rule of its own so that its inputs and settings
# never enter the `score` rule's command or params: a change there would make
# Snakemake re-score (and re-prune, re-train, re-evaluate) every finished method.
# Its rounds stop at the largest ratio's k, so adding a larger ratio re-scores it.
ruleorder: score_iterative > score


rule score_iterative:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        probes=[f"results/data/tasks/{task}.json" for task in PROBE_TASKS],
    output:
        "results/scores/{model}/iterative.json",
    params:
        probes=lambda wc, input: " ".join(input.probes),
        max_new_tokens=[config["tasks"][task]["max_new_tokens"] for task in PROBE_TASKS],
        num_samples=config["scoring"]["iterative"]["num_samples"],
        max_ratio=f"{max(config['pruning']['ratios']):g}",
        batch_size=config["scoring"]["batch_size"],
        seed=SEED,
        dtype=DTYPE,
    threads: job_threads("score")
    resources:
        **job_resources("score"),
    shell:
        "layerprune score --model {input.model} --method iterative --probe-tasks {params.probes}"
        " --probe-max-new-tokens {params.max_new_tokens} --num-samples {params.num_samples}"
        " --max-ratio {params.max_ratio} --batch-size {params.batch_size} --seed {params.seed}"
        " --dtype {params.dtype} --threads {threads} --out {output}"
