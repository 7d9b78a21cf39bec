# Dermatology imaging pipeline: prepare -> split -> train -> predict -> evaluate -> report -> compare.
# Every rule calls one `pipeline` subcommand, so each stage also runs without Snakemake.
#   snakemake --cores 2                               the embedded default (synthetic data)
#   snakemake --cores 2 --configfile configs/acne04.yaml   another config (replaces the default)
#   snakemake --cores 2 --config 'seeds=[0,1,2]'      override one value
import re

from snakemake.utils import min_version, validate

min_version("9.0")

if "datasets" not in config:  # a --configfile with its own datasets replaces the default config whole
    configfile: "configs/config.yaml"

# `--config seeds=[0,1,2]` arrives as strings; the schema wants integers.
if "seeds" in config:
    config["seeds"] = [int(seed) for seed in config["seeds"]]

validate(config, "pipeline/schemas/config.schema.yaml")

from pipeline import config as pipeline_config

CONFIG = pipeline_config.validate_config(config)
RESULTS = CONFIG["results_dir"]
MANIFESTS = CONFIG["manifests_dir"]
SEEDS = CONFIG["seeds"]
EXPERIMENTS = list(CONFIG["experiments"])


def task_of(experiment):
    return CONFIG["datasets"][CONFIG["experiments"][experiment]["dataset"]]["task"]


def dataset_of(experiment):
    return CONFIG["experiments"][experiment]["dataset"]


wildcard_constraints:
    experiment="|".join(map(re.escape, EXPERIMENTS)),
    dataset="|".join(map(re.escape, CONFIG["datasets"])),
    seed=r"\d+",


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        expand(f"{RESULTS}/{{experiment}}/seed{{seed}}/report.html", experiment=EXPERIMENTS, seed=SEEDS),
        f"{RESULTS}/comparison.html",
