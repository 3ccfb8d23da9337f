"""The sleeve's wire format on UDP 6783, in one place: what the control plane and tools import.

The format is implemented by concept in the modules named below; this module only gathers their
public names, so the data plane shell, the API and the benchmarks need one import, and the
pieces can move without touching them.

Bodies by kind::

    FRAMES     repeated {u16 length, 10-byte virtio-net header, Ethernet frame}   (batcher)
    SEGMENT    u32 super-frame id, u16 index, u16 count, u16 header length L,
               10-byte original virtio-net header, L bytes original headers, segment payload
                                                                    (segments, reassembly)
    HEARTBEAT  u64 timestamp (us), u64 echoed timestamp (0 = none), u8 flags (1 = I hear you)
    PROBE      u32 probe id, padding up to the probed body size
    PROBE_ACK  u32 probe id, u16 probe body size received                        (control)

Each behind the 32-byte header, sealed per hop (header), checked against replay (replay).
"""

from __future__ import annotations

from meshnet.dataplane.sleeve.batcher import (
    FRAME_OVERHEAD,
    FrameBatcher,
    max_frames_body,
    split_frames,
)
from meshnet.dataplane.sleeve.control import (
    HEARTBEAT_I_HEAR_YOU,
    PathHeartbeat,
    decode_heartbeat,
    decode_probe,
    decode_probe_ack,
    encode_heartbeat,
    encode_probe,
    encode_probe_ack,
)
from meshnet.dataplane.sleeve.header import (
    BROADCAST,
    HEADER_SIZE,
    KEY_SIZE,
    MAX_DATAGRAM,
    MAX_PEER,
    MAX_SEQUENCE,
    MAX_TTL,
    PASSING,
    SEALED,
    TAG_SIZE,
    VERSION,
    Buffer,
    DatagramDrop,
    DatagramError,
    DatagramHeader,
    Kind,
    decode_datagram,
    encode_datagram,
    encode_datagrams,
    encode_with_head,
    parse_header,
)
from meshnet.dataplane.sleeve.reassembly import (
    Reassembler,
    ReassemblerStatistics,
    ReassemblyTable,
)
from meshnet.dataplane.sleeve.replay import REPLAY_WINDOW, ReplayWindow
from meshnet.dataplane.sleeve.segments import (
    ENCAPSULATION_OVERHEAD,
    MAX_SEGMENT_HEADERS,
    SEGMENT_OVERHEAD,
    SEGMENT_PREFIX_SIZE,
    UNDERLAY_HEADERS,
    max_segment_payload,
    segment_bodies,
)

__all__ = [
    "BROADCAST",
    "ENCAPSULATION_OVERHEAD",
    "FRAME_OVERHEAD",
    "HEADER_SIZE",
    "HEARTBEAT_I_HEAR_YOU",
    "KEY_SIZE",
    "MAX_DATAGRAM",
    "MAX_PEER",
    "MAX_SEGMENT_HEADERS",
    "MAX_SEQUENCE",
    "MAX_TTL",
    "PASSING",
    "REPLAY_WINDOW",
    "SEALED",
    "SEGMENT_OVERHEAD",
    "SEGMENT_PREFIX_SIZE",
    "TAG_SIZE",
    "UNDERLAY_HEADERS",
    "VERSION",
    "Buffer",
    "DatagramDrop",
    "DatagramError",
    "DatagramHeader",
    "FrameBatcher",
    "Kind",
    "PathHeartbeat",
    "Reassembler",
    "ReassemblerStatistics",
    "ReassemblyTable",
    "ReplayWindow",
    "decode_datagram",
    "decode_heartbeat",
    "decode_probe",
    "decode_probe_ack",
    "encode_datagram",
    "encode_datagrams",
    "encode_heartbeat",
    "encode_probe",
    "encode_probe_ack",
    "encode_with_head",
    "max_frames_body",
    "max_segment_payload",
    "parse_header",
    "segment_bodies",
    "split_frames",
]
