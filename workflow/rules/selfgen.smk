SELFGEN = config["selfgen"]
MAGPIE = PROMPTS["magpie"]


if PROMPTS["source"] == "magpie":

    # Prompt-free SGR: the dense model writes its own user turns (no reference answers).
    rule magpie_prompts:
        input:
            model=lambda wc: dense_checkpoint(wc.model),
        output:
            prompts="results/data/prompts/{model}.jsonl",
            stats="results/data/prompts/{model}.stats.json",
        params:
            num_prompts=PROMPTS["num_prompts"],
            max_new_tokens=MAGPIE["max_new_tokens"],
            temperature=MAGPIE["temperature"],
            top_p=MAGPIE["top_p"],
            batch_size=MAGPIE["batch_size"],
            dedup_threshold=MAGPIE["dedup_threshold"],
            ngram=MAGPIE["ngram"],
            max_candidates=MAGPIE["max_candidates"],
            system_prompt=PROMPTS["system_prompt"] or "",
            max_prompt_tokens=PROMPTS["max_prompt_tokens"],
            backend=SELFGEN["backend"],
            seed=SEED,
            dtype=DTYPE,
        threads: job_threads("selfgen")
        resources:
            **job_resources("selfgen"),
        shell:
            "layerprune magpie-prompts --model {input.model} --num-prompts {params.num_prompts}"
            " --max-new-tokens {params.max_new_tokens} --temperature {params.temperature} --top-p {params.top_p}"
            " --batch-size {params.batch_size} --dedup-threshold {params.dedup_threshold} --ngram {params.ngram}"
            " --max-candidates {params.max_candidates} --system-prompt={params.system_prompt:q}"
            " --max-prompt-tokens {params.max_prompt_tokens} --backend {params.backend} --seed {params.seed}"
            " --dtype {params.dtype} --threads {threads} --out {output.prompts} --stats {output.stats}"

else:

    localrules:
        filter_prompts,

    # The shared prompt set, cut to what fits each model's token limit; `data` and `sgr` both use this file.
    rule filter_prompts:
        input:
            model=lambda wc: dense_checkpoint(wc.model),
            prompts="results/data/prompts.jsonl",
        output:
            prompts="results/data/prompts/{model}.jsonl",
            stats="results/data/prompts/{model}.stats.json",
        params:
            max_prompt_tokens=PROMPTS["max_prompt_tokens"],
        shell:
            "layerprune filter-prompts --prompts {input.prompts} --model {input.model}"
            " --max-prompt-tokens {params.max_prompt_tokens} --out {output.prompts} --stats {output.stats}"


# Generated once per model by the dense model, shared by every method and ratio.
rule selfgen:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        prompts=lambda wc: model_prompt_set(wc.model),
    output:
        dataset="results/selfgen/{model}.jsonl",
        stats="results/selfgen/{model}.stats.json",
    params:
        max_new_tokens=SELFGEN["max_new_tokens"],
        temperature=SELFGEN["temperature"],
        top_p=SELFGEN["top_p"],
        batch_size=SELFGEN["batch_size"],
        backend=SELFGEN["backend"],
        drop_empty=SELFGEN["drop_empty"],
        drop_truncated=SELFGEN["drop_truncated"],
        seed=SEED,
        dtype=DTYPE,
    threads: job_threads("selfgen")
    resources:
        **job_resources("selfgen"),
    shell:
        "layerprune selfgen --model {input.model} --prompts {input.prompts} --out {output.dataset}"
        " --stats {output.stats} --max-new-tokens {params.max_new_tokens} --temperature {params.temperature}"
        " --top-p {params.top_p} --batch-size {params.batch_size} --backend {params.backend}"
        " --drop-empty {params.drop_empty} --drop-truncated {params.drop_truncated} --seed {params.seed}"
        " --dtype {params.dtype} --threads {threads}"
