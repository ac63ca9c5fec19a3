"""A CAN bus between processes of one host that never leaves loopback (python-can
interface `udp_loopback`): UDP unicast on 127.0.0.1, one datagram per frame and member."""
