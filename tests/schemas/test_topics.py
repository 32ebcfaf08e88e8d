"""Topic builders and the strict parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    DecodeError,
    DownKind,
    ParsedTopic,
    Reason,
    Topics,
    UpKind,
    parse_topic,
    valid_id,
)

IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(fed=IDS, dev=IDS, up=st.sampled_from(list(UpKind)), down=st.sampled_from(list(DownKind)),
       sha=st.binary(min_size=32, max_size=32).map(bytes.hex))
def test_every_built_topic_parses_back(fed: str, dev: str, up: UpKind, down: DownKind,
                                       sha: str) -> None:
    t = Topics(fed)
    assert parse_topic(t.up(dev, up)) == ParsedTopic(fed, "up", dev, up.value)
    assert parse_topic(t.down(dev, down)) == ParsedTopic(fed, "down", dev, down.value)
    assert parse_topic(t.model) == ParsedTopic(fed, "model", None, "snapshot")
    assert parse_topic(t.model_delta) == ParsedTopic(fed, "model", None, "delta")
    assert parse_topic(t.model_key) == ParsedTopic(fed, "model", None, "key")
    assert parse_topic(t.model_key_earlier(7)) == ParsedTopic(fed, "model", None, "earlier_key")
    assert parse_topic(t.chunk(sha)) == ParsedTopic(fed, "model", None, "chunk")
    assert parse_topic(t.fleet) == ParsedTopic(fed, "fleet")
    assert parse_topic(t.ops_request(dev)) == ParsedTopic(fed, "ops", dev, "request")
    assert parse_topic(t.ops_reply(dev)) == ParsedTopic(fed, "ops", dev, "reply")


def test_topic_layout_is_the_documented_one() -> None:
    t = Topics("f1")
    assert [t.model, t.model_delta, t.model_all, t.chunk("ab"), t.down("d", DownKind.TASK),
            t.down_all("d"), t.up("d", UpKind.UPDATES), t.up_all, t.fleet, t.ops_request("op"),
            t.ops_requests, t.ops_reply("op"), t.ops_reply_prefix, t.model_key] == [
        "fl/f1/model", "fl/f1/model/delta", "fl/f1/model/#", "fl/f1/model/chunks/ab",
        "fl/f1/down/d/task", "fl/f1/down/d/#", "fl/f1/up/d/updates", "fl/f1/up/+/+",
        "fl/f1/fleet", "fl/f1/ops/request/op", "fl/f1/ops/request/+", "fl/f1/ops/reply/op",
        "fl/f1/ops/reply/", "fl/f1/model/key"]
    assert t.model_key_earlier(2) == "fl/f1/model/key/2"


@pytest.mark.parametrize(
    "topic",
    ["", "fl", "fl/f", "xx/f/model", "fl/+/model", "fl/f/model/#", "fl/f/up/d/#",
     "fl/f/up/+/status", "fl/f/up/d/task", "fl/f/down/d/status", "fl/f/up/d/status/x",
     "fl/f/up/d\n/status", "fl/f\n/model", "fl/f/model/chunks/" + "a" * 63,
     "fl/f/model/chunks/" + "A" * 64, "fl/f/model/chunks/" + "a" * 64 + "\n", "fl/f/fleet/x",
     "fl/f/ops/reply", "fl/f/ops/reply/a/b", "fl/f/ops/request", "fl/f/ops/request/+",
     "fl/f/ops/request/a/b", "fl/f/model/delta/x", "fl/f/model/key/x", "fl/f/model/key/0",
     "fl/f/model/key/01", "fl/f/model/key/1/x", "/fl/f/model",
     "fl/" + "a" * 65 + "/model"],
)
def test_anything_else_is_bad_topic(topic: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_topic(topic)
    assert info.value.reason is Reason.BAD_TOPIC


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | st.lists(st.sampled_from(
    ["fl", "f", "up", "down", "model", "d", "status", "#", "+", "", "chunks", "ops"]),
    max_size=6).map("/".join))
def test_parse_topic_raises_only_bad_topic(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except DecodeError as exc:
        assert exc.reason is Reason.BAD_TOPIC
    else:
        assert valid_id(parsed.fed) and (parsed.device is None or valid_id(parsed.device))


def test_ids_refuse_wildcards_slashes_and_a_trailing_newline() -> None:
    for bad in ("", "a/b", "+", "#", "a+", "-a", "a\n", "a b", "é", "a" * 65):
        assert not valid_id(bad), bad
        with pytest.raises(ValueError):
            Topics(bad)
        with pytest.raises(ValueError):
            Topics("f").up(bad, UpKind.STATUS)
    assert valid_id("dev-01_a.b") and valid_id("a" * 64)
