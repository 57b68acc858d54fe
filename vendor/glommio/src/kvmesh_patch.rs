//! kvmesh patch (see `vendor/README.md`): the pure rules of the multishot-poll patch, public
//! (hidden from the docs) only so that kvmesh's tests (`tests/glommio_stream.rs`) can check
//! them; glommio's own unit tests need dev-dependencies that kvmesh's lock file lacks.

use std::io;

/// The result a multishot poll's source holds after one more `IORING_CQE_F_MORE` completion
/// (`new`), given the one its reader has not taken yet (`untaken`). Poll masks are merged, so
/// one event never hides another's bits: a socket woken first with `POLLIN | POLLRDHUP` (a FIN)
/// and then with `POLLIN` (the data's own wake-up) within one reactor turn keeps `POLLRDHUP`,
/// the only announcement of an EOF queued behind data. An error replaces the mask, and a mask
/// replaces an untaken error (the error is then over: the poll is still armed).
pub fn merge_poll_events(
    untaken: Option<io::Result<usize>>,
    new: io::Result<usize>,
) -> io::Result<usize> {
    match (untaken, new) {
        (Some(Ok(a)), Ok(b)) => Ok(a | b),
        (_, new) => new,
    }
}
