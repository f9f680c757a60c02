"""Workload apps the lab runs inside pods: a fortio-compatible server and a TCP echo server.

- :mod:`meshlab.apps.fortio`: ``python -m meshlab.apps.fortio server -M "8070 http://x:8080"``
  (argv mirroring fortio's flags → :class:`~meshlab.apps.fortio_server.FortioServer`).
- :mod:`meshlab.apps.fortio_query`: the echo query knobs as pure decisions (sans-IO).
- :mod:`meshlab.apps.fortio_replies`: echo / debug / redirect / multi replies (sans-IO).
- :mod:`meshlab.apps.gohttp`: Go ``net/http`` server conventions fortio inherits (sans-IO).
- :mod:`meshlab.apps.fortio_server`: asyncio listeners with h11 framing.
- :mod:`meshlab.apps.fortio_upstream`: keep-alive client pool of the ``-M`` multi-server.
- :mod:`meshlab.apps.tcp_echo`: ``python -m meshlab.apps.tcp_echo --port 9000`` (SIGUSR1 or
  ``--fin-after-s``: half-close the open connections).
- :mod:`meshlab.apps.tcp_client`: a TCP client that reads to EOF and closes late
  (``--close-delay-s``), from a fixed local port if asked; JSON result.
- :mod:`meshlab.apps.netutil`: listen specs and Go's TCP keep-alive defaults.
"""
