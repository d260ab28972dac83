# Calibration-free methods (reverse, random) do not depend on the calibration
# set, so changing it re-scores only bi and angular.
CALIBRATED_METHODS = {"bi", "angular"}


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
        seed=SEED,
        dtype=DTYPE,
    threads: job_threads("score")
    resources:
        **job_resources("score"),
    shell:
        "layerprune score --model {input.model} --method {wildcards.method} {params.calibration}"
        " --max-length {params.max_length} --batch-size {params.batch_size} --seed {params.seed}"
        " --dtype {params.dtype} --threads {threads} --out {output}"
