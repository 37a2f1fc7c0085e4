"""Review data in every format, prompts, pairs, splits and their one-line errors."""

import json

import pandas as pd
import pytest

from tests.conftest import WORDS, make_word_tokenizer
from warprl import data
from warprl.errors import UserError

ROWS = [
    {"text": "good movie<br /><br />the plot was fun and the cast was great", "label": 1},
    {"text": "awful film the story was boring and the end was bad", "label": 0},
    {"text": "I love this film the music is wonderful", "label": 1},
    {"text": "I hate this movie the actor was terrible", "label": 0},
    {"text": "great fun the scene was wonderful", "label": 1},
    {"text": "boring plot bad cast awful music", "label": 0},
]


@pytest.fixture
def frame():
    return pd.DataFrame(ROWS)


def write_all_formats(df, tmp_path):
    paths = {"parquet": tmp_path / "r.parquet", "jsonl": tmp_path / "r.jsonl", "csv": tmp_path / "r.csv"}
    df.to_parquet(paths["parquet"])
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    df.to_csv(paths["csv"], index=False)
    return paths


def test_all_three_formats_read_the_same(frame, tmp_path):
    paths = write_all_formats(frame, tmp_path)
    loaded = {k: data.load_reviews(str(p)) for k, p in paths.items()}
    for df in loaded.values():
        assert df["text"].tolist() == loaded["parquet"]["text"].tolist()
        assert df["label"].tolist() == [1, 0, 1, 0, 1, 0]
    assert "<br" not in loaded["csv"]["text"][0]


def test_folder_of_files_is_concatenated(frame, tmp_path):
    frame.iloc[:3].to_parquet(tmp_path / "a.parquet")
    frame.iloc[3:].to_json(tmp_path / "b.jsonl", orient="records", lines=True)
    assert len(data.load_reviews(str(tmp_path))) == 6


def test_acl_imdb_layout(tmp_path):
    for split in ("train", "test"):
        for name, words in (("pos", "great fun"), ("neg", "awful bad")):
            d = tmp_path / "aclImdb" / split / name
            d.mkdir(parents=True)
            for i in range(3):
                (d / f"{i}_{8 if name == 'pos' else 2}.txt").write_text(f"{words} review number {i}<br />end")
    df = data.load_reviews(str(tmp_path / "aclImdb"))
    assert len(df) == 6 and sorted(df["label"].unique()) == [0, 1]
    assert set(df.loc[df["label"] == 1, "rating"]) == {8}
    assert "<br" not in df["text"][0]


def test_clean_text():
    assert data.clean_text("a<br /><br/>b  &amp;\n c") == "a b & c"


@pytest.mark.parametrize("content,match", [
    (None, "data file not found"),
    ("", "empty file"),
    ('{"review": "x", "label": 1}\n', "missing column 'text'"),
    ('{"text": "   ", "label": 1}\n{"text": "", "label": 0}\n', "no non-empty texts"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    if content is not None:
        p.write_text(content)
    with pytest.raises(UserError, match=match) as e:
        data.load_reviews(str(p))
    assert "\n" not in str(e.value)


def test_missing_label_column_when_required(tmp_path):
    p = tmp_path / "nolabel.csv"
    pd.DataFrame({"text": ["a b", "c d"]}).to_csv(p, index=False)
    with pytest.raises(UserError, match="missing column 'label'"):
        data.load_reviews(str(p), require_label=True)


def test_pairs_need_both_classes(frame):
    with pytest.raises(UserError, match="only positive"):
        data.preference_pairs(frame[frame["label"] == 1])


def test_pairs_are_seeded_and_never_reuse_a_review(frame):
    pairs = data.preference_pairs(frame, seed=3)
    assert len(pairs) == 3
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    assert len(set(chosen)) == 3 and len(set(rejected)) == 3
    pos = set(frame.loc[frame.label == 1, "text"])
    assert set(chosen) == pos
    assert data.preference_pairs(frame, seed=3) == pairs
    assert data.preference_pairs(frame, seed=3, epoch=1) != pairs or len(pairs) < 2


def test_split_is_seeded_disjoint_and_stratified(frame):
    big = pd.concat([frame] * 10, ignore_index=True)
    big["text"] = [f"{t} {i}" for i, t in enumerate(big["text"])]
    train, val = data.split_train_val(big, 0.2, seed=1)
    assert len(val) == 12 and len(train) == 48
    assert not set(train["text"]) & set(val["text"])
    assert (val["label"] == 1).sum() == 6
    assert data.split_train_val(big, 0.2, seed=1)[1]["text"].tolist() == val["text"].tolist()


def test_prompts_are_first_n_tokens():
    tok = make_word_tokenizer()
    prompts = data.make_prompts(["the movie was good and fun", "bad"], tok, n_tokens=3)
    assert prompts == ["the movie was"]  # the one-word text is too short to continue
    ranged = data.make_prompts(["the movie was good and the plot was fun and great"] * 20, tok, "2-5", seed=0)
    assert {len(p.split()) for p in ranged} <= {2, 3, 4, 5} and len({len(p.split()) for p in ranged}) > 1


def test_builtin_prompts_train_and_eval_are_disjoint():
    train, held_out = data.builtin_prompts("train"), data.builtin_prompts("eval")
    assert len(train) == 64 and len(held_out) >= 32
    assert not set(train) & set(held_out)
    assert len(set(data.BUILTIN_OPENINGS)) == len(data.BUILTIN_OPENINGS)


def distinct_openings(frame, n: int) -> pd.DataFrame:
    """``n`` reviews whose first three words (all in the test tokenizer's vocabulary) differ."""
    words = WORDS[:12]
    big = pd.concat([frame] * (n // len(frame) + 1), ignore_index=True).iloc[:n].copy()
    big["text"] = [f"{words[i % 12]} {words[i // 12 % 12]} {words[i // 144 % 12]} {t}" for i, t in enumerate(big["text"])]
    return big.reset_index(drop=True)


def test_load_prompts_from_data_splits_train_and_eval(frame, tmp_path):
    big = distinct_openings(frame, 240)
    p = tmp_path / "r.parquet"
    big.to_parquet(p)
    tok = make_word_tokenizer()
    train = data.load_prompts(str(p), tok, "train", n_tokens=4, seed=0)
    held = data.load_prompts(str(p), tok, "eval", n_tokens=4, seed=0)
    assert train and held and len(train) + len(held) == 240
    assert 10 <= len(held) <= 40  # ≈ 10 % held out by hash
    txt = tmp_path / "prompts.txt"
    lines = [f"prompt number {i}" for i in range(30)]
    txt.write_text("\n\n".join(lines) + "\n" + lines[0] + "\n")  # blank lines and a duplicate are dropped
    t, e = data.load_prompts(str(txt)), data.load_prompts(str(txt), split="eval")
    assert len(e) == 3 and len(t) == 27 and set(t) | set(e) == set(lines) and not set(t) & set(e)


@pytest.mark.parametrize("n_tokens", ["4", "2-5"])
def test_no_evaluation_prompt_is_trained_on_for_any_seed(frame, tmp_path, n_tokens):
    # Many reviews share their opening words: the prompts they yield must still land on one side only.
    big = distinct_openings(frame, 300)
    big.loc[::3, "text"] = "the movie was " + big.loc[::3, "text"]  # a third share their first three words
    p = tmp_path / "r.parquet"
    big.to_parquet(p)
    txt = tmp_path / "prompts.txt"
    txt.write_text("\n".join(f"line {i} of the file" for i in range(40)) + "\n")
    tok = make_word_tokenizer()
    for spec in (str(p), str(txt), "builtin"):
        held = data.load_prompts(spec, tok, "eval", n_tokens=n_tokens, seed=0)
        assert held == data.load_prompts(spec, tok, "eval", n_tokens=n_tokens, seed=5)  # the seed moves nothing
        for seed in range(6):
            train = data.load_prompts(spec, tok, "train", n_tokens=n_tokens, seed=seed)
            assert train and not set(train) & set(held), (spec, seed)
        if spec != "builtin":  # the training side is the same set for every seed, only its order moves
            assert set(data.load_prompts(spec, tok, "train", n_tokens=n_tokens, seed=1)) == set(
                data.load_prompts(spec, tok, "train", n_tokens=n_tokens, seed=2))


def test_split_lines_is_a_function_of_the_file():
    lines = [f"p{i}" for i in range(20)]
    train, held = data.split_lines(lines, 0.1)
    assert len(held) == 2 and len(train) == 18
    assert set(data.split_lines(list(reversed(lines)), 0.1)[1]) == set(held)  # order of the file: no matter
    assert set(data.split_lines(lines + ["p20"], 0.1)[1]) >= set(held) - {"p20"}  # ranked by hash of the line


@pytest.mark.parametrize("n", [1, 6, 10])
def test_a_prompt_file_too_short_to_split_is_one_line_error(tmp_path, n):
    txt = tmp_path / "few.txt"
    txt.write_text("\n".join(f"prompt {i}" for i in range(n)) + "\n")
    with pytest.raises(UserError, match="needs at least 2 on each side") as e:
        data.load_prompts(str(txt), split="eval")
    assert "\n" not in str(e.value)
