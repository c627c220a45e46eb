//! Integration tests: a real server on 127.0.0.1:0, real sockets, a manual clock.

mod admin;
mod cluster;
mod hardening;
mod harness;
mod interop;
mod leases;
mod legacy;
mod native;
mod semaphores;
mod tls;
