//! Free loopback ports. Each port is taken from the OS (bind to :0) and
//! never handed out twice in this process; ports are drawn from a window
//! chosen by process ID so concurrent test processes rarely meet.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub fn free_port() -> u16 {
    let mut taken = TAKEN.lock().expect("ports lock");
    let taken = taken.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a loopback port").port();
        if taken.insert(port) {
            return port;
        }
    }
}
