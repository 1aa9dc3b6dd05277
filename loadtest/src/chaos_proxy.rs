//! `chaos`'s network cut: a TCP proxy per worker process in front of PostgreSQL (and Redis), so
//! that one worker can be cut off from the database while the others and the API keep theirs.
//!
//! Cut = a black hole, as a partition looks to the worker: its open connections stay open but no
//! byte moves in either direction, and new connections are accepted and then hang the same way.
//! (Unlike a real partition the proxy's kernel still acknowledges what the worker sends; from the
//! worker's side a request simply never gets an answer.) Restore drops every connection that lived
//! through the cut (as a partition that heals finds its peers' state gone) and relays again.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Up,
    Cut,
}

/// A proxy relaying to `upstream` until dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding a proxy")?;
        let addr = listener.local_addr()?;
        let (link, watching) = watch::channel(Link::Up);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(relay(client, upstream, watching.clone()));
            }
        });
        Ok(Proxy { addr, link, accept })
    }

    /// Stops relaying; connections stay open (see the module doc).
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Closes the connections held through the cut and relays again.
    pub fn restore(&self) {
        self.link.send_replace(Link::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    if *link.borrow() == Link::Cut {
        // Accepted during the cut: hold it, silent, until the link is back; then close it.
        until(&mut link, Link::Up).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return; // upstream down (a restart): the client sees the connection close
    };
    let _ = server.set_nodelay(true);
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        () = until(&mut link, Link::Cut) => true,
    };
    if cut {
        // Bytes in flight were dropped with the copy; both sockets stay open, silent, until the
        // link is back, then close with this function.
        until(&mut link, Link::Up).await;
    }
}

/// Waits until the link is `want`, or the proxy is gone (its connections then close).
async fn until(link: &mut watch::Receiver<Link>, want: Link) {
    let _ = link.wait_for(|l| *l == want).await;
}
