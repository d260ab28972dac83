# Generated once per model by the dense model, shared by every method and ratio.
rule selfgen:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        prompts="results/data/prompts.jsonl",
    output:
        "results/selfgen/{model}.jsonl",
    params:
        max_new_tokens=config["selfgen"]["max_new_tokens"],
        temperature=config["selfgen"]["temperature"],
        top_p=config["selfgen"]["top_p"],
        batch_size=config["selfgen"]["batch_size"],
        seed=SEED,
        dtype=DTYPE,
    threads: job_threads("selfgen")
    resources:
        **job_resources("selfgen"),
    shell:
        "layerprune selfgen --model {input.model} --prompts {input.prompts} --out {output}"
        " --max-new-tokens {params.max_new_tokens} --temperature {params.temperature} --top-p {params.top_p}"
        " --batch-size {params.batch_size} --seed {params.seed}"
        " --dtype {params.dtype} --threads {threads}"
