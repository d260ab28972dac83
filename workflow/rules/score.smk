# Calibration-free methods (reverse, random) do not depend on the calibration
# set, so changing it re-scores only the calibrated methods. A setting reaches only
# the methods that use it: chunk_size the prefix-reusing scans (ppl, sleb),
# sleb_exclude_ends sleb.
CALIBRATED_METHODS = {"bi", "angular", "ppl", "taylor", "sleb"}
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
        seed=SEED,
        dtype=DTYPE,
    threads: job_threads("score")
    resources:
        **job_resources("score"),
    shell:
        "layerprune score --model {input.model} --method {wildcards.method} {params.calibration}"
        " --max-length {params.max_length} --batch-size {params.batch_size} --chunk-size {params.chunk_size}"
        " --sleb-exclude-ends {params.sleb_exclude_ends} --seed {params.seed}"
        " --dtype {params.dtype} --threads {threads} --out {output}"
