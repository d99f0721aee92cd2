//! A Linux TUN device: IP packets in and out of the kernel's network stack, one packet per read or
//! write, without the packet-information prefix. Creating one needs `CAP_NET_ADMIN`; giving it
//! addresses and bringing it up is the caller's job (`ip addr add ... dev NAME; ip link set NAME up`).
//! On other systems [`TunDevice::create`] fails with `Unsupported`.

#[cfg(target_os = "linux")]
pub use linux::TunDevice;
#[cfg(not(target_os = "linux"))]
pub use unsupported::TunDevice;

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;

    use tokio::io::unix::AsyncFd;

    /// An open TUN device; closing it (dropping) removes the interface unless it was made persistent.
    #[derive(Debug)]
    pub struct TunDevice {
        file: AsyncFd<File>,
        name: String,
    }

    impl TunDevice {
        /// Creates (or attaches to) the TUN interface `name`.
        ///
        /// # Errors
        /// An invalid name; `/dev/net/tun` missing; no `CAP_NET_ADMIN` (permission denied); the name taken
        /// by an interface of another kind. The error says which.
        pub fn create(name: &str) -> io::Result<Self> {
            let valid = !name.is_empty()
                && name.len() < libc::IFNAMSIZ
                && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
            if !valid {
                let reason = format!("invalid interface name {name:?}: 1 to 15 letters, digits, '-', '_' or '.'");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, reason));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(|err| io::Error::new(err.kind(), format!("cannot open /dev/net/tun: {err}")))?;
            // SAFETY: `ifreq` is plain data for which all-zero bytes are a valid value.
            let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
            for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
                *slot = byte as libc::c_char;
            }
            request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            // SAFETY: TUNSETIFF reads and updates one `ifreq`; `request` is a valid, exclusively borrowed
            // `ifreq` that outlives the call, and the descriptor is open for the whole call.
            let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request as *mut libc::ifreq) };
            if result < 0 {
                let err = io::Error::last_os_error();
                return Err(io::Error::new(err.kind(), format!("cannot create TUN device {name}: {err}")));
            }
            let name: Vec<u8> = request.ifr_name.iter().map(|byte| *byte as u8).take_while(|byte| *byte != 0).collect();
            // SAFETY: the `File` owns its descriptor, keeps it open until the `AsyncFd` drops it, and
            // always returns the same one from `as_raw_fd`.
            let file = unsafe { AsyncFd::register(file) }?;
            Ok(Self { file, name: String::from_utf8_lossy(&name).into_owned() })
        }

        /// The interface's name.
        pub fn name(&self) -> &str {
            &self.name
        }

        /// Reads one packet the kernel routed to this interface.
        ///
        /// # Cancel safety
        /// Cancel safe.
        pub async fn recv(&self, buffer: &mut [u8]) -> io::Result<usize> {
            loop {
                let mut ready = self.file.readable().await?;
                match ready.try_io(|file| (&mut file.get_ref()).read(buffer)) {
                    Ok(result) => return result,
                    Err(_would_block) => continue,
                }
            }
        }

        /// Hands one packet to the kernel without waiting: a full device queue is `WouldBlock`.
        ///
        /// # Errors
        /// What the kernel said, for example a packet larger than the interface's MTU.
        pub fn try_send(&self, packet: &[u8]) -> io::Result<()> {
            let written = (&mut self.file.get_ref()).write(packet)?;
            if written != packet.len() {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "TUN device took part of a packet"));
            }
            Ok(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod unsupported {
    use std::io;

    /// A TUN device; only Linux has them here.
    #[derive(Debug)]
    pub struct TunDevice(());

    impl TunDevice {
        /// Fails: TUN devices are supported on Linux only.
        ///
        /// # Errors
        /// Always `Unsupported`.
        pub fn create(name: &str) -> io::Result<Self> {
            Err(io::Error::new(io::ErrorKind::Unsupported, format!("cannot create TUN device {name}: Linux only")))
        }

        /// The interface's name.
        pub fn name(&self) -> &str {
            ""
        }

        /// Never resolves with a packet.
        pub async fn recv(&self, _buffer: &mut [u8]) -> io::Result<usize> {
            std::future::pending().await
        }

        /// Always `Unsupported`.
        ///
        /// # Errors
        /// Always.
        pub fn try_send(&self, _packet: &[u8]) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }
}
