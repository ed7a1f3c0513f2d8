from tandem.shared.text import IncrementalDetokenizer, StopStringMatcher


def test_detokenizer_emits_each_token_text_once(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = "Héllo wörld — naïve café 🍕 done."
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(lambda xs: tok.decode(xs, skip_special_tokens=True))
    pieces = [detok.push([i]) for i in ids]
    assert "".join(pieces) == text
    # A multi-byte character split over tokens is held back, never emitted as U+FFFD.
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_cuts_before_the_match_across_deltas():
    matcher = StopStringMatcher(["END", "\n\n"])
    out = "".join(matcher.feed(d) for d in ["Hello E", "N", "D and more"])
    assert out == "Hello "
    assert matcher.stopped
    assert matcher.feed("ignored") == ""


def test_stop_matcher_flushes_held_text_when_no_stop():
    matcher = StopStringMatcher(["STOP"])
    out = matcher.feed("abc ST") + matcher.feed("x")
    assert not matcher.stopped
    assert out + matcher.flush() == "abc STx"


def test_earliest_stop_string_wins():
    matcher = StopStringMatcher(["world", "lo"])
    assert matcher.feed("hello world") == "hel"
