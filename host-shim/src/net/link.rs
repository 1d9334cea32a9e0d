//! rtnetlink requests the VMs' networks need: veth pairs, links up with an
//! MTU, addresses, routes, and the tc redirect that joins a tap to a veth.
//!
//! A [`Netlink`] talks to the namespace its socket was opened in, whatever
//! thread uses it later. [`Netlink::open`] opens one in the calling thread's
//! namespace: call it on the host's side directly, and on a VM's namespace
//! thread (inside [`super::netns::NetNs::create`]) for the VM's side.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("opening a netlink socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("{action}: {source}")]
    Request {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {name} does not exist")]
    NoSuchLink { name: String },
}

/// A route netlink connection, bound to one network namespace.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The socket holds its namespace alive: close it with the handle.
        self.task.abort();
    }
}

fn req(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let action = action.into();
    move |source| LinkError::Request { action, source }
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace; its
    /// I/O runs on `rt` (the calling thread need not be one of its workers).
    pub fn open(rt: &tokio::runtime::Handle) -> Result<Self, LinkError> {
        let _entered = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Open)?;
        let task = rt.spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// The index of link `name`, `None` when there is none.
    pub async fn find(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(l.header.index)),
            Ok(None) => Ok(None),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(req(format!("looking up link {name}"))(e)),
        }
    }

    /// The index of link `name`, which must exist.
    pub async fn index(&self, name: &str) -> Result<u32, LinkError> {
        self.find(name).await?.ok_or_else(|| LinkError::NoSuchLink {
            name: name.to_owned(),
        })
    }

    /// A veth pair: `name` here, `peer` made directly inside the namespace
    /// `peer_ns` (one request, as `ip link add NAME type veth peer name
    /// PEER netns NS`).
    pub async fn add_veth(&self, name: &str, peer: &str, peer_ns: &File) -> Result<(), LinkError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(req(format!("creating veth pair {name}/{peer}")))
    }

    /// Sets link `index` up, with `mtu` when given.
    pub async fn up(&self, index: u32, mtu: Option<u32>) -> Result<(), LinkError> {
        let mut b = LinkUnspec::new_with_index(index).up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(req(format!("setting link {index} up")))
    }

    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), LinkError> {
        let mut add = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            // IFA_F_NODAD: usable at once, not ~1 s later.
            add.message_mut().header.flags |=
                rtnetlink::packet_route::address::AddressHeaderFlags::Nodad;
        }
        add.execute()
            .await
            .map_err(req(format!("adding {ip}/{prefix} to link {index}")))
    }

    /// A route to `dst/prefix` straight out of link `index` (no gateway).
    pub async fn add_link_route(
        &self,
        index: u32,
        dst: IpAddr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        use rtnetlink::RouteMessageBuilder;
        let msg = match dst {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, prefix)
                .output_interface(index)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, prefix)
                .output_interface(index)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(req(format!(
                "adding a route to {dst}/{prefix} via link {index}"
            )))
    }

    /// Every frame arriving on `from` leaves through `to` (an ingress
    /// qdisc on `from` and a match-all u32 filter with `mirred egress
    /// redirect`): with one such redirect each way, a tap and a veth end
    /// form a wire through the namespace, without a bridge.
    pub async fn redirect(&self, from: u32, to: u32) -> Result<(), LinkError> {
        let from_i = i32::try_from(from).unwrap_or(i32::MAX);
        self.handle
            .qdisc()
            .add(from_i)
            .ingress()
            .execute()
            .await
            .map_err(req(format!("adding an ingress qdisc to link {from}")))?;
        let filter = self
            .handle
            .traffic_filter(from_i)
            .add()
            .ingress()
            // ETH_P_ALL, in network byte order as tc wants it.
            .protocol((libc::ETH_P_ALL as u16).to_be())
            .redirect(to)
            .map_err(req(format!("building the redirect {from} -> {to}")))?;
        filter
            .execute()
            .await
            .map_err(req(format!("redirecting link {from} to link {to}")))
    }

    /// Removes every address of link `index` (and so its connected routes).
    pub async fn flush_addresses(&self, index: u32) -> Result<(), LinkError> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut found = Vec::new();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(req(format!("listing the addresses of link {index}")))?
        {
            found.push(a);
        }
        for a in found {
            self.handle
                .address()
                .del(a)
                .execute()
                .await
                .map_err(req(format!("removing an address of link {index}")))?;
        }
        Ok(())
    }

    /// Deletes link `index` (for a veth, both ends).
    pub async fn delete(&self, index: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(req(format!("deleting link {index}")))
    }

    /// Deletes link `name` if it exists.
    pub async fn delete_named(&self, name: &str) -> Result<bool, LinkError> {
        match self.find(name).await? {
            Some(i) => self.delete(i).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The names of every link in the namespace.
    pub async fn names(&self) -> Result<Vec<String>, LinkError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(l) = links.try_next().await.map_err(req("listing links"))? {
            if let (Some(name), _) = name_and_mtu(&l.attributes) {
                names.push(name);
            }
        }
        Ok(names)
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// A link's attributes of interest: its name and MTU.
pub(super) fn name_and_mtu(attrs: &[LinkAttribute]) -> (Option<String>, Option<u32>) {
    let mut name = None;
    let mut mtu = None;
    for a in attrs {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            _ => {}
        }
    }
    (name, mtu)
}
