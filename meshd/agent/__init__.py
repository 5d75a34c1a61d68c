"""The MeshAgent side of meshd: ``/agent.ashx`` (see ``shared/specs/agent-protocol.md``).

* :mod:`meshd.agent.wire` — sans-IO codec for the binary commands and JSON frames.
* :mod:`meshd.agent.identity` — node ids, ServerID, TLS hashes, mesh id forms.
* :mod:`meshd.agent.handshake` — the server side of the authentication handshake (sans-IO).
* :mod:`meshd.agent.pkcs7` — signature blobs from Windows agents (PKCS#7 SignedData).
"""
