"""The broker's wire format without sockets: what encode and decode refuse, and that they say so
with ProtocolError (the one exception the broker and the daemon expect from a message)."""

from __future__ import annotations

import socket

import pytest

from nsproxy_appliance.broker import protocol


def test_a_message_round_trips():
    message = {"id": 7, "op": "listen", "tenant": "acme", "listen": ["127.0.0.1:8080", "[::1]:80"], "backlog": 1024}
    assert protocol.decode(protocol.encode(message), 0) == message


@pytest.mark.parametrize(
    "data, why",
    [
        (b"[" * 200_000, "not JSON"),  # json raised RecursionError here: the broker stopped
        (b'{"op": "\xff"}', "not JSON"),
        (b'{"id": "\\ud800"}', "not JSON"),  # a lone surrogate could not be encoded into the reply
        (b"{", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_what_decode_refuses(data, why):
    with pytest.raises(protocol.ProtocolError, match=why):
        protocol.decode(data, 0)


def test_a_truncated_message_is_refused_before_it_is_read():
    with pytest.raises(protocol.ProtocolError, match="truncated"):
        protocol.decode(b"{}", socket.MSG_TRUNC)


@pytest.mark.parametrize(
    "message, why",
    [
        ({"id": 2**70}, "cannot be encoded"),
        ({"x": object()}, "cannot be encoded"),
        ({"x": "a" * protocol.MAX_MESSAGE}, "over the limit"),
    ],
)
def test_what_encode_refuses(message, why):
    with pytest.raises(protocol.ProtocolError, match=why):
        protocol.encode(message)
