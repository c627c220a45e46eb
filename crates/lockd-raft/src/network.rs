//! Peer network.
