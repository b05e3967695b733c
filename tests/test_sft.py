"""Cold-start SFT: packing is exact (hand-checked), and a short run learns."""

from slide.sft import pack


def test_pack_hand_checked():
    a = ([5, 6, 7, 8], [0, 0, 1, 1])  # prompt 5 6, target 7 8
    b = ([9, 10, 11], [0, 1, 1])
    ids, labels, pos, mask, real = pack([a, b], seq_len=8, pad=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 0]]  # longest first, one row
    assert real.tolist() == [[True] * 7 + [False]]  # what the router balance counts: not the padding
    # label at i is token i+1 where token i+1 is a target token; the last token of each example has none
    assert labels.tolist() == [[-100, 7, 8, -100, 10, 11, -100, -100]]
    assert pos.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    m = mask[0, 0]
    assert m[5].tolist() == [False, False, False, False, True, True, False, False]  # b sees only b
    assert m[3].tolist() == [True, True, True, True, False, False, False, False]
    assert m[7, 7] and not m[7, :7].any()  # padding sees only itself


def test_pack_splits_rows_and_never_cuts_examples():
    exs = [([1] * 5, [1] * 5), ([2] * 4, [1] * 4), ([3] * 3, [1] * 3)]
    ids, labels, pos, mask, real = pack(exs, seq_len=8, pad=0)
    assert ids.shape == (2, 8)
    assert real.sum(dim=1).tolist() == [8, 4]
    rows = [r for r in ids.tolist()]
    assert rows[0][:8] == [1] * 5 + [3] * 3 and rows[1][:4] == [2] * 4


def test_short_sft_learns(sft_model):
    path, result = sft_model
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert result["summary"]["pass@1"] >= 0.1  # from 0 at random init
