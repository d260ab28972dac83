RECOVERY = config["recovery"]


def recovery_dataset(wildcards):
    """`sgr` trains on the dense model's answers, `data` on the prompt set's references."""
    if wildcards.recovery == "sgr":
        return f"results/selfgen/{wildcards.model}.jsonl"
    return "results/data/prompts.jsonl"


rule recover:
    input:
        model="results/pruned/{model}/{method}/{ratio}",
        dataset=recovery_dataset,
    output:
        directory("results/recovered/{model}/{method}/{ratio}/{recovery}"),
    wildcard_constraints:
        recovery="data|sgr",
    params:
        lora_r=RECOVERY["lora_r"],
        lora_alpha=RECOVERY["lora_alpha"],
        lora_dropout=RECOVERY["lora_dropout"],
        learning_rate=RECOVERY["learning_rate"],
        num_epochs=RECOVERY["num_epochs"],
        batch_size=RECOVERY["batch_size"],
        grad_accum=RECOVERY["grad_accum"],
        max_length=RECOVERY["max_length"],
        warmup_steps=RECOVERY["warmup_steps"],
        lr_scheduler=RECOVERY["lr_scheduler"],
        weight_decay=RECOVERY["weight_decay"],
        max_steps=RECOVERY["max_steps"],
        seed=SEED,
        dtype=DTYPE,
        # one process per GPU (accelerate/torchrun) when resources.recover asks for >1
        launcher=rule_command_prefix(config["resources"], "recover"),
    threads: job_threads("recover")
    resources:
        **job_resources("recover"),
    shell:
        "{params.launcher} recover --model {input.model} --dataset {input.dataset} --out {output}"
        " --recovery {wildcards.recovery} --lora-r {params.lora_r} --lora-alpha {params.lora_alpha}"
        " --lora-dropout {params.lora_dropout} --learning-rate {params.learning_rate}"
        " --num-epochs {params.num_epochs} --batch-size {params.batch_size} --grad-accum {params.grad_accum}"
        " --max-length {params.max_length} --warmup-steps {params.warmup_steps}"
        " --lr-scheduler {params.lr_scheduler} --weight-decay {params.weight_decay}"
        " --max-steps {params.max_steps} --seed {params.seed} --dtype {params.dtype} --threads {threads}"
