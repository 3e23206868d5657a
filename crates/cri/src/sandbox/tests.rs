use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::Status;

use crate::fake::{Fake, cri};

/// A create that fails is undone under its lease: the undo runs, the lease ends, and the
/// name is free for the next attempt, which succeeds and leaves no lease either.
#[tokio::test]
async fn a_failed_create_is_undone_and_frees_its_name() {
    let fake = Arc::new(Fake::default());
    let (_t, cri) = cri(&fake);
    let undone = AtomicUsize::new(0);
    let e = cri
        .create_reserved(
            "web_pod_ns_uid_0",
            "id-1",
            "container",
            async |lease: &str| -> Result<(), Status> {
                assert_eq!(*fake.leases.lock().unwrap(), [lease.to_string()]);
                Err(Status::internal("make failed"))
            },
            async || {
                undone.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.message(), "make failed");
    assert_eq!(undone.load(Ordering::SeqCst), 1);
    assert!(fake.leases.lock().unwrap().is_empty(), "the lease ended");
    // The name again, under a new id: free, and nothing to undo this time.
    let made = cri
        .create_reserved(
            "web_pod_ns_uid_0",
            "id-2",
            "container",
            async |_: &str| Ok::<_, Status>(7),
            async || {
                undone.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await
        .unwrap();
    assert_eq!(made, 7);
    assert_eq!(undone.load(Ordering::SeqCst), 1);
    assert!(fake.leases.lock().unwrap().is_empty());
    assert_eq!(fake.leases_made.lock().unwrap().len(), 2);
    // A name that is taken is refused before anything is made.
    let e = cri
        .create_reserved(
            "web_pod_ns_uid_0",
            "id-3",
            "container",
            async |_: &str| Ok::<_, Status>(0),
            async || {},
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert_eq!(fake.leases_made.lock().unwrap().len(), 2);
}
