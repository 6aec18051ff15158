"""`sslstudy preflight`: each planted error gives its one line (job kind, value, limit, key to change)
and the command fails; the default study passes."""

import pytest
import yaml
from sslstudy import preflight
from sslstudy.errors import UserError

from tests.helpers import AXES_OFF, ROOT, sparse_dataset

STUDY = str(ROOT / "params/study.yaml")


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """natural and aerial at 32 px, as the default study's, 3 levels (4, 16, 64 classes), no pixels."""
    root = tmp_path_factory.mktemp("data")
    for name in ("natural", "aerial", "texture"):
        sparse_dataset(root / name, dict(train=3000, test=1000), [4, 16, 64], size=32)
    return root


def problems(tmp_path, root, change: dict, estimate: bool = False) -> list[str]:
    """The preflight problems of params/study.yaml with data.root = root and `change` merged over it
    (estimate: the jobs sized too, else the checks alone)."""
    f = tmp_path / "grid.yaml"
    f.write_text(yaml.safe_dump(preflight.merge(dict(data=dict(root=str(root))), change)))
    grid = preflight.load_grid([str(f)], study=STUDY)
    return preflight.run(grid, tmp_path / "preflight.csv", estimate=estimate).problems


def test_the_default_study_passes_its_checks(tmp_path, small_root):
    assert problems(tmp_path, small_root, {}) == []


def test_a_queue_not_a_multiple_of_the_global_batch(tmp_path, small_root):
    (line,) = problems(tmp_path, small_root, dict(methods=dict(moco=dict(queue=1000))))
    assert line == (
        "pretrain moco: methods.moco.queue 1000 is not a multiple of the global batch 128 (pretrain.batch_size); "
        "set methods.moco.queue to 896 (5 jobs)"
    )


def test_one_image_per_gpu(tmp_path, small_root):
    launch = dict(executor="slurm", pretrain=dict(nodes=2, gpus=8, cpus=64))
    (line,) = problems(tmp_path, small_root, dict(launch=launch, methods=dict(byol=dict(batch_size=16))))
    assert line == (
        "pretrain byol: 1 image per GPU (global batch 16 over 16 GPUs) is below the 2 batch norm needs; "
        "raise methods.byol.batch_size to at least 32 or lower launch.pretrain.gpus (5 jobs)"
    )


def test_a_subset_larger_than_its_dataset(tmp_path, small_root):
    lines = problems(tmp_path, small_root, dict(study=dict(subsets=[5000]), quantity=dict(subsets=[2000, 4000])))
    assert lines == [
        f"subset natural n5000: 5000 images exceed the 3000 train images of {small_root}/natural; "
        "lower study.subsets to at most 3000",
        f"subset natural n4000: 4000 images exceed the 3000 train images of {small_root}/natural; "
        "lower quantity.subsets to at most 3000",
        f"subset aerial n5000: 5000 images exceed the 3000 train images of {small_root}/aerial; "
        "lower study.subsets to at most 3000",
        "subset natural+aerial n5000: 5000 images exceed the 3000 train images of "
        "results/data/seed0/natural+aerial; lower study.subsets to at most 3000",
    ]


def test_more_labelled_images_per_class_than_a_class_has(tmp_path):
    root = tmp_path / "data"
    sparse_dataset(root / "natural", dict(train=64 * 300, test=2000), [4, 16, 64], size=32, small=(5, 50))
    sparse_dataset(root / "aerial", dict(train=3000, test=1000), [4, 16, 64], size=32)
    sparse_dataset(root / "texture", dict(train=3000, test=1000), [4, 16, 64], size=32)
    (line,) = problems(tmp_path, root, dict(quantity=dict(labels=[200])))
    assert line == (
        f"lowshot natural: 200 labelled images per class (quantity.labels) but class 'level2-5' of {root}/natural "
        "has 50 train images (20 less the val holdout); lower quantity.labels to at most 20"
    )


def test_views_larger_than_the_stored_images(tmp_path, small_root):
    lines = problems(tmp_path, small_root, dict(pretrain=dict(views=dict(size=48))))
    assert (
        f"evaluate natural: the evaluation view is 48 px (pretrain.views.size) but {small_root}/natural stores "
        "32 px images; ingest larger images or lower pretrain.views.size" in lines
    )
    assert any(ln.startswith("pretrain simclr (natural frac1 clean): view 1 is 48 px") for ln in lines)


def test_a_method_setting_from_study_yaml_in_a_grid_at_another_scale(tmp_path, small_root):
    lines = problems(tmp_path, small_root, dict(pretrain=dict(backbone=dict(arch="resnet18"))))
    assert (
        "pretrain byol: methods.byol.batch_size = 32 comes from params/study.yaml (chosen for cnn4 at 32 px) but "
        "this grid trains resnet18 at 32 px; set methods.byol.batch_size in the grid's own files "
        "(official values: params/methods/byol.yaml)"
    ).replace("params/study.yaml", STUDY) in lines


def test_the_command_prints_each_line_and_fails(tmp_path, small_root, capsys):
    f = tmp_path / "grid.yaml"
    f.write_text(yaml.safe_dump(dict(data=dict(root=str(small_root)), methods=dict(moco=dict(queue=1000)))))
    with pytest.raises(UserError, match=r"^1 problem\(s\) in .*; fix them before submitting$"):
        preflight.main([str(f)], tmp_path / "preflight.csv", study=STUDY)
    assert capsys.readouterr().out.startswith("pretrain moco: methods.moco.queue 1000 is not a multiple")


def test_deepcluster_official_head_on_a_40gb_gpu(tmp_path):
    """DeepCluster's official head (k 10,000 over 4,096-d features, params/methods/deepcluster.yaml) on all
    of an ImageNet-size train split, one 40 GB GPU per run: its share of the features does not fit, and
    the line says to split them over more GPUs; on 8 GPUs each holds an eighth and it fits."""
    root = tmp_path / "data"
    sparse_dataset(root / "imagenet", dict(train=1_281_167, test=50_000), [1000], size=256)
    official = yaml.safe_load((ROOT / "params/methods/deepcluster.yaml").read_text())
    grid = dict(
        study=dict(methods=["deepcluster"], domains=["imagenet"], subsets=[1.0], seeds=[0]),
        pretrain=dict(backbone=dict(arch="resnet50", small_stem=False), views=dict(size=224), epochs=100),
        launch=dict(executor="slurm", pretrain=dict(gpus=1, cpus=8, gpu_mem_gb=40), evaluation=dict(mem_gb=480)),
        **AXES_OFF,
        **official,
    )
    (line,) = problems(tmp_path, root, grid, estimate=True)
    assert line.startswith("pretrain deepcluster (study axis, 1 job): ") and line.endswith(
        " GB per GPU exceeds 90% of launch.pretrain.gpu_mem_gb 40 (36.0 GB); raise launch.pretrain.gpus or nodes "
        "(each GPU clusters its share of the features), or lower methods.deepcluster.proj_hidden"
    )
    # the features of 1,281,167 images, 4,096 floats each, as train.embed makes them: batches, then concatenated
    assert 2 * 1_281_167 * 4096 * 4 / 1e9 < float(line.split(": ")[1].split(" GB")[0]) < 50
    grid["launch"]["pretrain"].update(gpus=8, cpus=64)
    assert problems(tmp_path, root, grid, estimate=True) == []


def test_the_default_study_passes_its_preflight_within_30_cpu_seconds(tmp_path, small_root):
    """params/study.yaml (on domains of its size: 32 px, 4 / 16 / 64 classes) passes its whole
    preflight, every job sized, with the cost table written; in at most 30 s of CPU, worker processes
    included (no cached estimate: a fresh table path)."""
    import resource

    def cpu() -> float:
        return sum(
            getattr(resource.getrusage(who), f)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for f in ("ru_utime", "ru_stime")
        )

    f = tmp_path / "grid.yaml"
    f.write_text(yaml.safe_dump(dict(data=dict(root=str(small_root)))))
    start = cpu()
    report = preflight.run(preflight.load_grid([str(f)], study=STUDY), tmp_path / "preflight.csv")
    seconds = cpu() - start
    assert report.problems == [] and (tmp_path / "preflight.csv").is_file()
    methods = {r.method for r in report.rows if r.kind == "pretrain"}
    assert methods == {"simclr", "moco", "byol", "swav", "barlow", "densecl", "deepcluster", "pcl"}
    assert seconds <= 30, seconds
