"""Per-record memos: remembered across runs, appended whole, a torn entry ignored."""

from tasks.core.memo import LineMemo, remembered_map


def test_entries_survive_a_new_memo_and_a_torn_last_entry_is_skipped(tmp_path):
    memo = LineMemo(tmp_path, "step", "key")
    memo.put('{"a": 1}', ['{"a": 1, "b": 2}', '{"a": 1, "b": 3}'], {"n": 2})
    memo.put('{"a": 2}', ['{"a": 2, "b": 4}'])
    memo.save()
    whole = memo.path.read_bytes()
    memo.path.write_bytes(whole[:-12])  # a run killed mid-write: the last entry is torn
    again = LineMemo(tmp_path, "step", "key")
    assert again.get('{"a": 1}') == (['{"a": 1, "b": 2}', '{"a": 1, "b": 3}'], {"n": 2})
    assert again.get('{"a": 2}') is None and len(again) == 1
    assert LineMemo(tmp_path, "step", "another key").get('{"a": 1}') is None
    # The next run appends after the torn bytes: its entries stay whole, the torn one is
    # never read as a hit (before: the first new entry was glued onto it and came back as its
    # outputs, broken, forever).
    again.put('{"a": 2}', ['{"a": 2, "b": 5}'])
    again.put('{"a": 3}', ['{"a": 3, "b": 6}'])
    again.save()
    later = LineMemo(tmp_path, "step", "key")
    assert later.get('{"a": 2}') == (['{"a": 2, "b": 5}'], {})
    assert later.get('{"a": 3}') == (['{"a": 3, "b": 6}'], {})
    assert later.get('{"a": 1}') == (['{"a": 1, "b": 2}', '{"a": 1, "b": 3}'], {"n": 2})


def test_an_entry_torn_anywhere_is_never_a_hit(tmp_path):
    memo = LineMemo(tmp_path, "step", "key")
    memo.put('{"a": 1}', ['{"a": 1, "b": 2}'], {"n": 1})
    memo.save()
    whole = memo.path.read_bytes()
    for cut in range(40, len(whole) - 1):  # past the digest, short of the newline
        memo.path.write_bytes(whole[:cut])
        torn = LineMemo(tmp_path, "step", "key")
        torn.put('{"z": 0}', ['{"z": 0}'])
        torn.save()  # glues nothing onto the torn bytes
        assert LineMemo(tmp_path, "step", "key").get('{"a": 1}') is None, cut


def test_remembered_map_makes_only_what_it_does_not_know(tmp_path):
    made = []

    def make(line: str) -> list[str]:
        made.append(line)
        return [line.upper()]

    first = LineMemo(tmp_path, "upper", "v1")
    assert list(remembered_map(['"x"', '"y"'], first, make)) == ['"X"', '"Y"']
    first.save()
    second = LineMemo(tmp_path, "upper", "v1")
    assert list(remembered_map(['"x"', '"z"', '"y"'], second, make)) == ['"X"', '"Z"', '"Y"']
    assert made == ['"x"', '"y"', '"z"']


def test_new_entries_are_appended_as_they_come_and_read_back_when_asked_for(tmp_path):
    from tasks.core.memo import FLUSH_EVERY

    memo = LineMemo(tmp_path, "step", "key")
    for n in range(FLUSH_EVERY + 3):
        memo.put(f'{{"n": {n}}}', [f'{{"m": {n}}}'])
    assert memo.path.read_text().count("\n") == FLUSH_EVERY  # a block written before the end
    memo.save()
    again = LineMemo(tmp_path, "step", "key")
    assert len(again) == FLUSH_EVERY + 3 and not again._new  # nothing of it held, only where
    assert again.get('{"n": 7}') == (['{"m": 7}'], {})
    assert again.get(f'{{"n": {FLUSH_EVERY + 2}}}') == ([f'{{"m": {FLUSH_EVERY + 2}}}'], {})


def test_an_entry_naming_a_file_that_is_gone_is_not_an_answer(tmp_path):
    made = tmp_path / "flip.jpg"
    made.write_bytes(b"pixels")
    memo = LineMemo(tmp_path, "step", "key")
    memo.put('{"a": 1}', ['{"a": 1, "flip": "x"}'], {"paths": [str(made)]})
    memo.save()
    assert LineMemo(tmp_path, "step", "key").get('{"a": 1}') == (
        ['{"a": 1, "flip": "x"}'], {"paths": [str(made)]})
    made.unlink()  # a store cleaned by hand
    assert LineMemo(tmp_path, "step", "key").get('{"a": 1}') is None


def lines_of(items) -> list[str]:
    return [f'{{"item": "img_{n:05d}.xml", "split": "train"}}' for n in items]


def test_a_new_line_changes_only_the_chunk_it_falls_into():
    from tasks.core.memo import content_chunks

    before = [tuple(chunk) for chunk in content_chunks(lines_of(range(2000)))]
    after = [tuple(chunk) for chunk in content_chunks(lines_of([*range(1000), 5000, *range(1000, 2000)]))]
    assert 10 < len(before) < 100  # ~64 lines a chunk
    assert len(set(before) - set(after)) == 1 and len(set(after) - set(before)) == 1
    assert [line for chunk in after for line in chunk] == lines_of([*range(1000), 5000, *range(1000, 2000)])


def test_a_chunk_seen_before_is_answered_without_making_it_and_a_damaged_one_is_made_again(tmp_path):
    from tasks.core.memo import ChunkMemo

    kept = tmp_path / "flip.png"
    kept.write_bytes(b"x")
    made: list[int] = []

    def make(chunk):
        made.append(len(chunk))
        return [line.replace("train", "made") for line in chunk], {"paths": [str(kept)]}

    def run(key="key"):
        made.clear()
        return [line for outputs, _, _ in ChunkMemo(tmp_path, "step", key).map(lines, make)
                for line in outputs]

    lines = lines_of(range(500))
    first = run()
    assert first == [line.replace("train", "made") for line in lines]
    assert sum(made) == 500
    assert run() == first and made == []  # every chunk remembered, none made again
    assert run("another key") == first and sum(made) == 500  # another setting: its own memo

    files = sorted(ChunkMemo(tmp_path, "step", "key").folder.glob("*/*.txt"))
    files[0].write_text(files[0].read_text()[:-20])  # damaged (a write is whole: by hand)
    assert run() == first and len(made) == 1
    kept.unlink()  # a file its answer names is gone (a store cleaned by hand): made again
    assert run() == first and sum(made) == 500


def test_a_memo_is_true_without_reading_its_file(tmp_path, monkeypatch):
    # `filter(None, memos)` (the ingest saving its memos) asks each memo's truth: that must not
    # index the whole file (~100 MB at 100,000 images), as `__len__` would.
    memo = LineMemo(tmp_path, "step", "key")
    memo.put("a line", ["an output"])
    memo.save()
    reopened = LineMemo(tmp_path, "step", "key")
    opened = []
    real = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    assert list(filter(None, [reopened])) == [reopened] and opened == []
    assert len(reopened) == 1 and opened == [reopened.path]
