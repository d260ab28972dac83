# A setting reaches only the methods that use it (layerprune.registry says which:
# calibration text for the calibrated methods, chunk_size for the prefix-reusing
# scans, the largest ratio for the greedy ones, whose rounds stop at its k), so
# changing the calibration set re-scores only the calibrated methods, and adding a
# larger ratio re-scores only sleb and iterative.
CALIBRATED_METHODS = CALIBRATED


rule score:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        calibration=lambda wc: (calibration_file() if wc.method in CALIBRATED_METHODS else []),
    output:
        shared_path("scores/{fp}/{model}/{method}.json"),
    log:
        shared_log("score", "{fp}/{model}/{method}"),
    benchmark:
        shared_benchmark("score", "{fp}/{model}/{method}")
    priority: CRITICAL_PATH_PRIORITY
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("score")
    resources:
        **job_resources("score"),
    params:
        calibration=lambda wc, input: (f"--calibration {input.calibration}" if input.calibration else ""),
        settings=score_settings,
    shell:
        "layerprune score --model {input.model:q} --method {wildcards.method:q} {params.calibration}"
        " --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


# The iterative method (arXiv 2602.01997) evaluates candidate removals on the
# prepared probe tasks. It has a rule of its own so that its inputs never enter
# the `score` rule's command or params: a change there would make Snakemake
# re-score (and re-prune, re-train, re-evaluate) every finished method.
ruleorder: score_iterative > score


rule score_iterative:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        probes=[task_file(task) for task in PROBE_TASKS],
    output:
        shared_path("scores/{fp}/{model}/iterative.json"),
    log:
        shared_log("score_iterative", "{fp}/{model}"),
    benchmark:
        shared_benchmark("score_iterative", "{fp}/{model}")
    priority: CRITICAL_PATH_PRIORITY
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("score_iterative")
    resources:
        **job_resources("score_iterative"),
    params:
        settings=iterative_settings,
    shell:
        "layerprune score --model {input.model:q} --method iterative --probe-tasks {input.probes:q}"
        " --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"
