"""Task documents are built once per tokenizer *content*: every model of a study saves its own copy of
the same tokenizer, and building lm-eval's requests again for each copy costs seconds per cell."""



from helpers import make_cfg
from transformers import AutoTokenizer

from paramscope.data.tokenizer import word_level_tokenizer
from paramscope.evaluation import tasks


def test_copies_of_one_tokenizer_share_a_fingerprint_and_another_vocabulary_does_not(tmp_path):
    tok = word_level_tokenizer(["<pad>", "<unk>", "<eos>", "a", "b"])
    for name in ("one", "two"):
        tok.save_pretrained(tmp_path / name)
    one, two = (AutoTokenizer.from_pretrained(tmp_path / n) for n in ("one", "two"))
    assert one.name_or_path != two.name_or_path
    assert tasks.tokenizer_fingerprint(one) == tasks.tokenizer_fingerprint(two)
    other = word_level_tokenizer(["<pad>", "<unk>", "<eos>", "b", "a"])  # same words, other ids
    assert tasks.tokenizer_fingerprint(other) != tasks.tokenizer_fingerprint(one)


def test_task_docs_are_built_once_for_two_copies_of_the_tokenizer(smoke_suite, tmp_path, monkeypatch):
    _, data = smoke_suite
    cfg = make_cfg("ablate", ["profile=smoke", f"paths.tasks={data / 'tasks'}"])
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    for name in ("a", "b"):
        tok.save_pretrained(tmp_path / name)
    copies = [AutoTokenizer.from_pretrained(tmp_path / n) for n in ("a", "b")]
    built = []
    real = tasks.build_docs
    monkeypatch.setattr(tasks, "build_docs", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(tasks, "_DOCS", {})
    first, second = (tasks.task_docs(cfg, "kv", "test", t) for t in copies)
    assert built == ["ps_kv"]
    assert first is second and len(first.docs) > 0
    tasks.task_docs(cfg, "kv", "dev", copies[1])  # another split is other documents: built anew
    assert built == ["ps_kv", "ps_kv"]


def test_a_task_folder_prepared_again_is_read_again(smoke_suite, tmp_path, monkeypatch):
    import shutil

    _, data = smoke_suite
    folder = tmp_path / "tasks"
    shutil.copytree(data / "tasks", folder)
    cfg = make_cfg("ablate", ["profile=smoke", f"paths.tasks={folder}"])
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    monkeypatch.setattr(tasks, "_DOCS", {})
    before = tasks.task_docs(cfg, "kv", "test", tok)
    jsonl = folder / "kv" / "eval.jsonl"
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # a smaller task, same folder
    after = tasks.task_docs(cfg, "kv", "test", tok)
    assert 0 < len(after.docs) < len(before.docs)
