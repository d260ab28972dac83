if PROMPTS["source"] == "magpie":

    # Prompt-free SGR: the dense model writes its own user turns (no reference answers).
    rule magpie_prompts:
        input:
            model=lambda wc: dense_checkpoint(wc.model),
        output:
            prompts="results/data/prompts/{model}.jsonl",
            stats="results/data/prompts/{model}.stats.json",
        params:
            settings=MAGPIE_SETTINGS,
        threads: job_threads("selfgen")
        resources:
            **job_resources("selfgen"),
        shell:
            "layerprune magpie-prompts --model {input.model:q} --settings {params.settings:q} --threads {threads}"
            " --out {output.prompts:q} --stats {output.stats:q}"

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
            settings=PROMPT_FILTER_SETTINGS,
        shell:
            "layerprune filter-prompts --prompts {input.prompts:q} --model {input.model:q}"
            " --settings {params.settings:q} --out {output.prompts:q} --stats {output.stats:q}"


# Generated once per model by the dense model, shared by every method and ratio.
rule selfgen:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        prompts=lambda wc: model_prompt_set(wc.model),
    output:
        dataset="results/selfgen/{model}.jsonl",
        stats="results/selfgen/{model}.stats.json",
    params:
        settings=SELFGEN_SETTINGS,
    threads: job_threads("selfgen")
    resources:
        **job_resources("selfgen"),
    shell:
        "layerprune selfgen --model {input.model:q} --prompts {input.prompts:q} --settings {params.settings:q}"
        " --threads {threads} --out {output.dataset:q} --stats {output.stats:q}"
