"""``bangerd-root``: the root helper of a system install (DESIGN.md s.1).

``host.helper_protocol`` holds the typed requests shared by the client
(``host.helper_client``)
and this server; ``guard`` the checks the helper adds on its side (the owner's uid
and dirs); ``server`` the socket; ``main`` the console script.
"""
