"""The socket broker: the only privileged part of nsproxy that runs all the time.

A socket's network namespace is fixed when socket() is called, so only making sockets needs
privilege (setns: CAP_SYS_ADMIN; ports below 1024: CAP_NET_BIND_SERVICE). `nsproxy-broker` makes
each tenant's listening sockets inside the tenant's namespace, and unconnected sockets for
`from: tenant` upstreams, and hands them to nsproxyd (which runs with no capabilities) over a unix
socket with SCM_RIGHTS. It keeps every listening socket it made, so a restarted or upgraded daemon
gets the very same sockets back while the kernel queues connections in their backlog.

    protocol.py   the messages (JSON + fds over SOCK_SEQPACKET) and peer credentials
    registry.py   what the broker may make: the tenants of the root-owned runtime config
    making.py     sockets made inside a namespace (enter, socket, bind, listen, restore)
    server.py     the broker process (`nsproxy-broker`)
    client.py     the daemon's side: requests, reconnection, the upstream socket reserve
"""
