# Data: adapter -> manifest -> frozen split. Config values reach the shell only through `:q` (shell-quoted).
import json


def dataset_spec(wildcards):
    spec = dict(CONFIG["datasets"][wildcards.dataset], name=wildcards.dataset, manifests_dir=MANIFESTS)
    return json.dumps(spec)  # key order matters: the class list is ordered


rule prepare:
    output:
        f"{MANIFESTS}/{{dataset}}.csv",
    params:
        spec=dataset_spec,
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "benchmarks/prepare/{dataset}.tsv"
    shell:
        "pipeline prepare --dataset-spec {params.spec:q} > {log:q} 2>&1"


# A split is written once and frozen: `ancient` keeps a re-generated manifest from re-splitting, and
# `pipeline split` refuses to overwrite a split that no longer matches its manifest.
rule split:
    input:
        ancient(f"{MANIFESTS}/{{dataset}}.csv"),
    output:
        f"{MANIFESTS}/{{dataset}}.split.csv",
    params:
        spec=dataset_spec,
    log:
        "logs/split/{dataset}.log",
    benchmark:
        "benchmarks/split/{dataset}.tsv"
    shell:
        "pipeline split --dataset-spec {params.spec:q} > {log:q} 2>&1"
