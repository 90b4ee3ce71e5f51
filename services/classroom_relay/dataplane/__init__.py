"""Media data plane of the classroom relay.

Runs in its own OS process (``python -m services.classroom_relay.dataplane``), never under eventlet.
Small parts with one job each, in the spirit of LiveKit's ``pkg/sfu``:

- ``rtp``        RTP header parsing and validation with counted drop reasons
- ``h264``       keyframe detection in H.264 RTP payloads
- ``buffer``     preallocated packet ring doubling as the retransmission (NACK) cache
- ``forwarder``  per-output SSRC / sequence / timestamp rewriting across layer switches
- ``allocator``  per-output simulcast layer choice against a byte budget
- ``pacer``      per-output token bucket
- ``rtcp``       RTCP parsing and building, receiver statistics, keyframe-request throttling
- ``admission``  join tokens and sender pinning
- ``metrics``    Prometheus exporter on its own registry
- ``control``    line-delimited JSON control channel for the nameko control plane
- ``engine``     the forwarding loop tying the parts together
"""
