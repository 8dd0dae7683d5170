//! The media contract, run against the local-directory store and (with the `s3` feature) a
//! real S3-compatible server started by `scripts/test`.

use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
use hubbub_store::{LocalMedia, MediaStore, SqliteStore};

async fn sqlite(dir: &std::path::Path) -> SqliteStore {
    let queue =
        EmbeddedQueue::open(dir.join("hubbub.db"), EmbeddedConfig::default()).expect("queue");
    SqliteStore::open(queue).await.expect("store")
}

async fn contract(media: &dyn MediaStore) {
    let small = media
        .put("u1", "image/png", b"\x89PNG small".to_vec())
        .await
        .expect("put");
    assert_eq!(
        (
            small.owner.as_str(),
            small.content_type.as_str(),
            small.size
        ),
        ("u1", "image/png", 10)
    );
    let big_bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let big = media
        .put("u2", "video/mp4", big_bytes.clone())
        .await
        .expect("put big");
    assert_ne!(small.id, big.id);
    let (info, bytes) = media.get(&small.id).await.expect("get").expect("exists");
    assert_eq!((info, bytes), (small.clone(), b"\x89PNG small".to_vec()));
    let (_, bytes) = media.get(&big.id).await.expect("get").expect("exists");
    assert!(bytes == big_bytes, "big object round trip");
    assert!(media.get("md-nope").await.expect("get").is_none());
    let missing = media
        .missing(&[small.id.clone(), "md-nope".into(), big.id.clone()])
        .await
        .expect("missing");
    assert_eq!(missing, ["md-nope"]);
    // An upload spooled to a file (12 MB: more than one part of a multipart upload) is taken
    // by the store, and counts in its owner's usage.
    let spooled = tempfile::NamedTempFile::new().expect("spool file");
    let file_bytes: Vec<u8> = (0..12_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(spooled.path(), &file_bytes).expect("write");
    let path = spooled.into_temp_path().keep().expect("keep");
    let from_file = media
        .put_file("u2", "video/webm", path.clone(), file_bytes.len() as u64)
        .await
        .expect("put_file");
    assert!(!path.exists(), "the store took the file");
    let (_, bytes) = media
        .get(&from_file.id)
        .await
        .expect("get")
        .expect("exists");
    assert!(bytes == file_bytes, "file round trip");
    assert_eq!(media.usage("u1").await.expect("usage"), 10);
    assert_eq!(
        media.usage("u2").await.expect("usage"),
        3_000_000 + 12_000_000
    );
    assert_eq!(media.usage("nobody").await.expect("usage"), 0);
    // Erasing an owner's media (user erasure) takes its rows and its bytes, no one else's.
    assert_eq!(media.erase_owner("u2").await.expect("erase"), 2);
    assert!(media.get(&big.id).await.expect("get").is_none());
    assert!(media.get(&from_file.id).await.expect("get").is_none());
    assert_eq!(media.usage("u2").await.expect("usage"), 0);
    assert!(media.get(&small.id).await.expect("get").is_some());
    assert_eq!(media.erase_owner("u2").await.expect("again"), 0);
}

#[tokio::test]
async fn local_media_keeps_its_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    let media = LocalMedia::new(dir.path().join("media"), store).expect("media");
    contract(&media).await;
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("media"))
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // The erased owner's files are gone: only u1's is left.
    let files = std::fs::read_dir(dir.path().join("media"))
        .expect("dir")
        .filter_map(Result::ok)
        .count();
    assert_eq!(files, 1);
}

#[cfg(feature = "s3")]
fn s3_config() -> hubbub_store::S3Config {
    let endpoint = std::env::var("HUBBUB_TEST_S3_ENDPOINT")
        .expect("HUBBUB_TEST_S3_ENDPOINT is not set: run scripts/test, which starts an S3-compatible server");
    hubbub_store::S3Config {
        endpoint,
        bucket: "hubbub-test".into(),
        region: "us-east-1".into(),
        access_key_id: "hubbub".into(),
        secret_access_key: "hubbub-secret".into(),
        allow_http: true,
    }
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_media_keeps_its_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let media = hubbub_store::ObjectMedia::s3(&s3_config(), sqlite(dir.path()).await).expect("s3");
    contract(&media).await;
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_down_or_refusing_is_unavailable_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    // Wrong credentials: refused.
    let mut wrong = s3_config();
    wrong.secret_access_key = "not-the-secret".into();
    let media = hubbub_store::ObjectMedia::s3(&wrong, store.clone()).expect("s3");
    let e = media
        .put("u1", "image/png", b"x".to_vec())
        .await
        .expect_err("refused");
    assert!(
        matches!(e, hubbub_store::StoreError::Unavailable(_)),
        "{e:?}"
    );
    // Nothing listens there: unavailable, and no metadata row was written.
    let mut down = s3_config();
    down.endpoint = "http://127.0.0.1:9".into();
    let media = hubbub_store::ObjectMedia::s3(&down, store.clone()).expect("s3");
    let e = media
        .put("u1", "image/png", b"x".to_vec())
        .await
        .expect_err("down");
    assert!(
        matches!(e, hubbub_store::StoreError::Unavailable(_)),
        "{e:?}"
    );
    assert!(
        media
            .missing(&["anything".into()])
            .await
            .expect("missing")
            .len()
            == 1
    );
}
