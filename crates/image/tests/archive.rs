//! Archive import and export against an in-memory store: the formats `ctr`, `docker save` and
//! Docker 25 write, round trips, and a corpus of hostile archives.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read, Write};

use berth_content::Digest;
use berth_image::{
    BlobSink, BlobSource, Descriptor, ExportImage, ExportOptions, ImageError, ImportOptions,
    ImportedImage, export, import,
};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use tar::{EntryType, Header};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const IMAGE_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

// ---------------------------------------------------------------------------------------------
// An in-memory content store that verifies what it is given.

#[derive(Debug, Default, Clone)]
struct Mem {
    blobs: HashMap<Digest, Vec<u8>>,
    puts: usize,
}

impl BlobSink for Mem {
    fn has(&mut self, d: &Digest) -> bool {
        self.blobs.contains_key(d)
    }

    fn put(
        &mut self,
        expected: Option<&Digest>,
        r: &mut dyn Read,
    ) -> Result<(Digest, u64), ImageError> {
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes)?;
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(ImageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        self.puts += 1;
        let size = bytes.len() as u64;
        self.blobs.insert(actual.clone(), bytes);
        Ok((actual, size))
    }
}

impl BlobSource for Mem {
    fn size(&self, d: &Digest) -> Result<u64, ImageError> {
        self.blobs
            .get(d)
            .map(|b| b.len() as u64)
            .ok_or_else(|| ImageError::NotFound(d.to_string()))
    }

    fn open(&self, d: &Digest) -> Result<Box<dyn Read + '_>, ImageError> {
        let blob = self
            .blobs
            .get(d)
            .ok_or_else(|| ImageError::NotFound(d.to_string()))?;
        Ok(Box::new(blob.as_slice()))
    }
}

impl Mem {
    fn json(&self, d: &Digest) -> Value {
        serde_json::from_slice(&self.blobs[d]).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Building archives.

/// A tar entry, written without the tar crate's path checks (so hostile names can be built).
enum E {
    File(String, Vec<u8>),
    Dir(String),
    Link(String, EntryType, String),
}

fn file(path: impl Into<String>, data: impl Into<Vec<u8>>) -> E {
    E::File(path.into(), data.into())
}

fn raw_header(path: &str, kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    let name = &mut h.as_gnu_mut().unwrap().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(path, data) => {
                let h = raw_header(path, EntryType::Regular, data.len() as u64);
                b.append(&h, data.as_slice()).unwrap();
            }
            E::Dir(path) => {
                let h = raw_header(path, EntryType::Directory, 0);
                b.append(&h, std::io::empty()).unwrap();
            }
            E::Link(path, kind, target) => {
                let mut h = raw_header(path, *kind, 0);
                h.set_link_name(target).unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn desc(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": Digest::of(bytes).to_string(), "size": bytes.len()})
}

fn blob_path(bytes: &[u8]) -> String {
    format!("blobs/sha256/{}", Digest::of(bytes).hex())
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn foreign_arch() -> &'static str {
    if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    }
}

/// A one-layer OCI image.
struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl Image {
    fn new(seed: &str, arch: &str) -> Image {
        let config = json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []}, "seed": seed,
        })
        .to_string()
        .into_bytes();
        let layer = gzip(&tar_of(&[file(format!("{seed}.txt"), seed)]));
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &config),
            "layers": [desc(OCI_LAYER_GZIP, &layer)],
        })
        .to_string()
        .into_bytes();
        Image {
            manifest,
            config,
            layer,
        }
    }

    fn desc(&self) -> Value {
        desc(OCI_MANIFEST, &self.manifest)
    }

    fn digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    fn blobs(&self) -> Vec<E> {
        [&self.manifest, &self.config, &self.layer]
            .into_iter()
            .map(|b| file(blob_path(b), b.clone()))
            .collect()
    }
}

fn with_annotations(mut desc: Value, pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    desc["annotations"] = Value::Object(map);
    desc
}

fn index_of(manifests: Vec<Value>) -> Vec<u8> {
    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        .to_string()
        .into_bytes()
}

/// An OCI layout archive: the metadata files first, then `blobs`.
fn oci_archive(index: &[u8], blobs: Vec<E>) -> Vec<u8> {
    let mut entries = vec![
        file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
        file("index.json", index.to_vec()),
        E::Dir("blobs/".into()),
        E::Dir("blobs/sha256/".into()),
    ];
    entries.extend(blobs);
    tar_of(&entries)
}

fn busybox() -> (Image, Vec<u8>) {
    let image = Image::new("busybox", host_arch());
    let entry = with_annotations(
        image.desc(),
        &[
            (IMAGE_NAME, "docker.io/library/busybox:latest"),
            (REF_NAME, "latest"),
        ],
    );
    let archive = oci_archive(&index_of(vec![entry]), image.blobs());
    (image, archive)
}

fn import_ok(archive: &[u8], sink: &mut Mem, opts: &ImportOptions) -> Vec<ImportedImage> {
    import(archive, sink, opts).unwrap_or_else(|e| panic!("import failed: {e}: {e:?}"))
}

fn names(images: &[ImportedImage]) -> Vec<&str> {
    images.iter().map(|i| i.name.as_str()).collect()
}

fn err_of(archive: &[u8]) -> ImageError {
    err_with(archive, &ImportOptions::default())
}

fn err_with(archive: &[u8], opts: &ImportOptions) -> ImageError {
    match import(archive, &mut Mem::default(), opts) {
        Ok(images) => panic!("import succeeded: {images:?}"),
        Err(e) => e,
    }
}

fn assert_invalid(e: ImageError, needle: &str) {
    match &e {
        ImageError::InvalidArchive(msg) if msg.contains(needle) => {}
        other => panic!("expected InvalidArchive mentioning {needle:?}, got {other}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// OCI layout.

#[test]
fn imports_an_oci_layout() {
    let (image, archive) = busybox();
    let mut sink = Mem::default();
    let images = import_ok(&archive, &mut sink, &ImportOptions::default());
    assert_eq!(names(&images), ["docker.io/library/busybox:latest"]);
    let target = &images[0].target;
    assert_eq!(target.media_type, OCI_MANIFEST);
    assert_eq!(target.digest, image.digest());
    assert_eq!(target.size, image.manifest.len() as i64);
    assert_eq!(target.annotations[REF_NAME], "latest");
    for blob in [&image.manifest, &image.config, &image.layer] {
        assert_eq!(sink.blobs[&Digest::of(blob)], *blob);
    }
}

#[test]
fn entries_may_come_in_any_order() {
    let image = Image::new("x", host_arch());
    let index = index_of(vec![with_annotations(
        image.desc(),
        &[(IMAGE_NAME, "example.com/x:1")],
    )]);
    let mut entries = image.blobs();
    entries.reverse();
    entries.push(file("index.json", index));
    entries.push(file("./oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#));
    let images = import_ok(
        &tar_of(&entries),
        &mut Mem::default(),
        &ImportOptions::default(),
    );
    assert_eq!(names(&images), ["example.com/x:1"]);
}

#[test]
fn names_follow_ctr() {
    let image = Image::new("n", host_arch());
    let tag_only = with_annotations(image.desc(), &[(REF_NAME, "1.0")]);
    let archive = oci_archive(&index_of(vec![tag_only]), image.blobs());

    // A bare tag names nothing without a base name...
    let images = import_ok(&archive, &mut Mem::default(), &ImportOptions::default());
    assert!(images.is_empty());
    // ...and is appended to it.
    let base = ImportOptions {
        base_name: Some("example.com/app".into()),
        ..Default::default()
    };
    let images = import_ok(&archive, &mut Mem::default(), &base);
    assert_eq!(names(&images), ["example.com/app:1.0"]);

    // Digest names: <base>@<digest> for every manifest, next to its name.
    let digests = ImportOptions {
        digests: true,
        ..base.clone()
    };
    let images = import_ok(&archive, &mut Mem::default(), &digests);
    let by_digest = format!("example.com/app@{}", image.digest());
    assert_eq!(names(&images), ["example.com/app:1.0", by_digest.as_str()]);
    assert!(images.iter().all(|i| i.target.digest == image.digest()));

    // A full reference name is kept, but dropped when it is not under the base name.
    let full = with_annotations(image.desc(), &[(REF_NAME, "example.com/other:2")]);
    let archive = oci_archive(&index_of(vec![full]), image.blobs());
    let images = import_ok(&archive, &mut Mem::default(), &ImportOptions::default());
    assert_eq!(names(&images), ["example.com/other:2"]);
    let images = import_ok(&archive, &mut Mem::default(), &base);
    assert!(images.is_empty());

    // Without a base name, digest names go under the image's repository.
    let (busybox, archive) = busybox();
    let opts = ImportOptions {
        digests: true,
        ..Default::default()
    };
    let images = import_ok(&archive, &mut Mem::default(), &opts);
    let by_digest = format!("docker.io/library/busybox@{}", busybox.digest());
    assert_eq!(
        names(&images),
        ["docker.io/library/busybox:latest", by_digest.as_str()]
    );
}

#[test]
fn index_name_points_at_the_whole_index() {
    let image = Image::new("i", host_arch());
    let index = index_of(vec![with_annotations(
        image.desc(),
        &[(IMAGE_NAME, "example.com/i:1")],
    )]);
    let archive = oci_archive(&index, image.blobs());
    let opts = ImportOptions {
        index_name: Some("example.com/all:v1".into()),
        ..Default::default()
    };
    let mut sink = Mem::default();
    let images = import_ok(&archive, &mut sink, &opts);
    assert_eq!(names(&images), ["example.com/all:v1", "example.com/i:1"]);
    let target = &images[0].target;
    assert_eq!(target.media_type, OCI_INDEX);
    assert_eq!(target.digest, Digest::of(&index));
    assert_eq!(sink.blobs[&target.digest], index);
}

#[test]
fn multi_platform_index_may_lack_other_platforms() {
    let host = Image::new("host", host_arch());
    let other = Image::new("other", foreign_arch());
    let platform = |arch: &str| json!({"os": "linux", "architecture": arch});
    let mut host_entry = host.desc();
    host_entry["platform"] = platform(host_arch());
    let mut other_entry = other.desc();
    other_entry["platform"] = platform(foreign_arch());
    let nested = index_of(vec![host_entry, other_entry]);
    let top = index_of(vec![with_annotations(
        desc(OCI_INDEX, &nested),
        &[(IMAGE_NAME, "example.com/multi:1")],
    )]);

    // Everything present.
    let mut all = vec![file(blob_path(&nested), nested.clone())];
    all.extend(host.blobs());
    all.extend(other.blobs());
    let images = import_ok(
        &oci_archive(&top, all),
        &mut Mem::default(),
        &ImportOptions::default(),
    );
    assert_eq!(images[0].target.digest, Digest::of(&nested));
    assert_eq!(images[0].target.media_type, OCI_INDEX);

    // The other platform missing entirely: allowed.
    let mut partial = vec![file(blob_path(&nested), nested.clone())];
    partial.extend(host.blobs());
    let images = import_ok(
        &oci_archive(&top, partial),
        &mut Mem::default(),
        &ImportOptions::default(),
    );
    assert_eq!(names(&images), ["example.com/multi:1"]);

    // This host's platform missing a layer: refused, naming the blob.
    let mut broken = vec![file(blob_path(&nested), nested.clone())];
    broken.push(file(blob_path(&host.manifest), host.manifest.clone()));
    broken.push(file(blob_path(&host.config), host.config.clone()));
    let e = err_of(&oci_archive(&top, broken));
    assert_invalid(e, &Digest::of(&host.layer).to_string());
}

#[test]
fn imports_a_gzipped_archive() {
    let (image, archive) = busybox();
    let images = import_ok(
        &gzip(&archive),
        &mut Mem::default(),
        &ImportOptions::default(),
    );
    assert_eq!(images[0].target.digest, image.digest());
}

#[test]
fn blobs_already_stored_are_not_written_again() {
    let (_, archive) = busybox();
    let mut sink = Mem::default();
    let first = import_ok(&archive, &mut sink, &ImportOptions::default());
    let puts = sink.puts;
    let second = import_ok(&archive, &mut sink, &ImportOptions::default());
    assert_eq!(first, second);
    assert_eq!(sink.puts, puts);

    // An archive holding only the manifest of an image whose blobs are stored already.
    let (image, _) = busybox();
    let index = index_of(vec![with_annotations(
        image.desc(),
        &[(IMAGE_NAME, "example.com/b:1")],
    )]);
    let thin = oci_archive(
        &index,
        vec![file(blob_path(&image.manifest), image.manifest.clone())],
    );
    let images = import_ok(&thin, &mut sink, &ImportOptions::default());
    assert_eq!(images[0].target.digest, image.digest());
}

// ---------------------------------------------------------------------------------------------
// docker save.

struct DockerSave {
    archive: Vec<u8>,
    config: Vec<u8>,
    layers: [Vec<u8>; 2],
}

/// A `docker save` archive: two layers (one gzipped, one not) listed before manifest.json, two
/// tags, and the legacy files.
fn docker_save() -> DockerSave {
    let config = json!({"architecture": host_arch(), "os": "linux", "rootfs": {"type": "layers"}})
        .to_string()
        .into_bytes();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let layers = [
        tar_of(&[file("bin/sh", "#!")]),
        gzip(&tar_of(&[file("etc/motd", "hi")])),
    ];
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["busybox:latest", "foo/bar:v1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]);
    let archive = tar_of(&[
        E::Dir("aaa/".into()),
        file("aaa/VERSION", "1.0"),
        file("aaa/json", "{}"),
        file("aaa/layer.tar", layers[0].clone()),
        E::Dir("bbb/".into()),
        file("bbb/layer.tar", layers[1].clone()),
        file(config_name, config.clone()),
        file("manifest.json", manifest.to_string()),
        file("repositories", r#"{"busybox":{"latest":"bbb"}}"#),
    ]);
    DockerSave {
        archive,
        config,
        layers,
    }
}

#[test]
fn imports_docker_save() {
    let save = docker_save();
    let mut sink = Mem::default();
    let images = import_ok(&save.archive, &mut sink, &ImportOptions::default());
    assert_eq!(
        names(&images),
        ["docker.io/library/busybox:latest", "docker.io/foo/bar:v1"]
    );
    let target = &images[0].target;
    assert_eq!(target.media_type, DOCKER_MANIFEST);
    assert_eq!(images[1].target.digest, target.digest);
    assert_eq!(target.annotations[REF_NAME], "latest");
    assert_eq!(
        images[1].target.annotations[IMAGE_NAME],
        "docker.io/foo/bar:v1"
    );

    let manifest = sink.json(&target.digest);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(
        manifest["config"],
        desc(
            "application/vnd.docker.container.image.v1+json",
            &save.config
        )
    );
    assert_eq!(
        manifest["layers"],
        json!([
            desc(
                "application/vnd.docker.image.rootfs.diff.tar",
                &save.layers[0]
            ),
            desc(
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                &save.layers[1]
            ),
        ])
    );
    for blob in [&save.config, &save.layers[0], &save.layers[1]] {
        assert!(sink.blobs.contains_key(&Digest::of(blob)));
    }
    // The manifest is compact JSON in containerd's field order, so both build the same digest.
    let go_desc = |media_type: &str, bytes: &[u8]| {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#,
            Digest::of(bytes),
            bytes.len()
        )
    };
    let expected = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{},"layers":[{},{}]}}"#,
        go_desc(
            "application/vnd.docker.container.image.v1+json",
            &save.config
        ),
        go_desc(
            "application/vnd.docker.image.rootfs.diff.tar",
            &save.layers[0]
        ),
        go_desc(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            &save.layers[1]
        ),
    );
    assert_eq!(sink.blobs[&target.digest], expected.as_bytes());
}

#[test]
fn docker_save_with_symlinked_layers_and_no_tags() {
    let layer = tar_of(&[file("x", "y")]);
    let config = b"{\"os\":\"linux\"}".to_vec();
    let manifest =
        json!([{"Config": "c.json", "RepoTags": null, "Layers": ["a/layer.tar", "b/layer.tar"]}]);
    let archive = tar_of(&[
        file("a/layer.tar", layer.clone()),
        E::Link(
            "b/layer.tar".into(),
            EntryType::Symlink,
            "../a/layer.tar".into(),
        ),
        file("c.json", config),
        file("manifest.json", manifest.to_string()),
    ]);
    // Untagged: only the index name or digest names reach it.
    let opts = ImportOptions {
        base_name: Some("import-2024-01-01".into()),
        digests: true,
        index_name: Some("all".into()),
    };
    let mut sink = Mem::default();
    let images = import_ok(&archive, &mut sink, &opts);
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].name, "all");
    let manifest_digest = &images[1].target.digest;
    assert_eq!(
        images[1].name,
        format!("import-2024-01-01@{manifest_digest}")
    );
    let layers = &sink.json(manifest_digest)["layers"];
    assert_eq!(layers[0], layers[1]);
    let index = sink.json(&images[0].target.digest);
    assert_eq!(index["manifests"][0]["digest"], manifest_digest.to_string());
}

#[test]
fn prefers_the_oci_layout_of_docker_25() {
    let image = Image::new("d25", host_arch());
    let index = index_of(vec![with_annotations(
        image.desc(),
        &[
            (IMAGE_NAME, "docker.io/library/d25:latest"),
            (REF_NAME, "latest"),
        ],
    )]);
    let manifest = json!([{
        "Config": blob_path(&image.config),
        "RepoTags": ["d25:latest"],
        "Layers": [blob_path(&image.layer)],
    }]);
    let mut blobs = image.blobs();
    blobs.push(file("manifest.json", manifest.to_string()));
    let images = import_ok(
        &oci_archive(&index, blobs),
        &mut Mem::default(),
        &ImportOptions::default(),
    );
    assert_eq!(names(&images), ["docker.io/library/d25:latest"]);
    assert_eq!(images[0].target.digest, image.digest());
    assert_eq!(images[0].target.media_type, OCI_MANIFEST);
}

// ---------------------------------------------------------------------------------------------
// Export, and round trips.

fn export_all(src: &Mem, images: &[ImportedImage], opts: &ExportOptions) -> Vec<u8> {
    let images: Vec<ExportImage> = images
        .iter()
        .map(|i| ExportImage {
            name: i.name.clone(),
            target: i.target.clone(),
        })
        .collect();
    let mut out = Vec::new();
    export(&mut out, src, &images, opts).unwrap_or_else(|e| panic!("export failed: {e}: {e:?}"));
    out
}

fn entries_of(archive: &[u8]) -> Vec<(String, u32, u64, u64, u64, Vec<u8>)> {
    let mut ar = tar::Archive::new(archive);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mtime().unwrap(),
                data,
            )
        })
        .collect()
}

#[test]
fn exports_an_oci_layout() {
    let (image, archive) = busybox();
    let mut store = Mem::default();
    let images = import_ok(&archive, &mut store, &ImportOptions::default());
    let out = export_all(&store, &images, &ExportOptions::default());

    let entries = entries_of(&out);
    let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let mut blob_paths: Vec<String> = [&image.manifest, &image.config, &image.layer]
        .into_iter()
        .map(|b| blob_path(b))
        .collect();
    blob_paths.sort();
    let mut expected = vec!["blobs/", "blobs/sha256/"];
    expected.extend(blob_paths.iter().map(String::as_str));
    expected.extend(["index.json", "oci-layout"]);
    assert_eq!(paths, expected);
    for (path, mode, uid, gid, mtime, data) in &entries {
        let want = if path.ends_with('/') { 0o755 } else { 0o644 };
        assert_eq!((*mode, *uid, *gid, *mtime), (want, 0, 0, 0), "{path}");
        if let Some(hex) = path.strip_prefix("blobs/sha256/")
            && !hex.is_empty()
        {
            assert_eq!(Digest::of(data).hex(), hex);
        }
    }
    let layout: Value = serde_json::from_slice(&entries.last().unwrap().5).unwrap();
    assert_eq!(layout, json!({"imageLayoutVersion": "1.0.0"}));
    let index: Value = serde_json::from_slice(&entries[entries.len() - 2].5).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let entry = &index["manifests"][0];
    assert_eq!(entry["digest"], image.digest().to_string());
    assert_eq!(
        entry["annotations"][IMAGE_NAME],
        "docker.io/library/busybox:latest"
    );
    assert_eq!(entry["annotations"][REF_NAME], "latest");

    // Deterministic.
    assert_eq!(export_all(&store, &images, &ExportOptions::default()), out);
}

#[test]
fn round_trips() {
    let (_, oci) = busybox();
    let save = docker_save();
    for (what, archive) in [
        ("oci", oci),
        ("docker", save.archive),
        ("gzip", gzip(&docker_save().archive)),
    ] {
        let mut first_store = Mem::default();
        let first = import_ok(&archive, &mut first_store, &ImportOptions::default());
        let exported = export_all(&first_store, &first, &ExportOptions::default());
        let mut second_store = Mem::default();
        let second = import_ok(&exported, &mut second_store, &ImportOptions::default());
        assert_eq!(first, second, "{what}");
        for image in &second {
            assert!(second_store.blobs.contains_key(&image.target.digest));
        }
        let again = export_all(&second_store, &second, &ExportOptions::default());
        assert_eq!(again, exported, "{what}");
    }
}

#[test]
fn round_trip_adds_the_name_annotation_only() {
    // An archive naming its image by tag only: export records the full name, which import then
    // keeps in the target's annotations, as containerd does. Everything else is identical.
    let image = Image::new("t", host_arch());
    let archive = oci_archive(
        &index_of(vec![with_annotations(image.desc(), &[(REF_NAME, "v1")])]),
        image.blobs(),
    );
    let opts = ImportOptions {
        base_name: Some("example.com/t".into()),
        ..Default::default()
    };
    let mut store = Mem::default();
    let first = import_ok(&archive, &mut store, &opts);
    let second = import_ok(
        &export_all(&store, &first, &ExportOptions::default()),
        &mut Mem::default(),
        &opts,
    );
    assert_eq!(names(&second), ["example.com/t:v1"]);
    let (mut a, b) = (first[0].target.clone(), &second[0].target);
    a.annotations
        .insert(IMAGE_NAME.into(), "example.com/t:v1".into());
    assert_eq!(&a, b);
}

#[test]
fn export_skips_missing_platforms_only_when_asked() {
    let host = Image::new("host", host_arch());
    let other = Image::new("other", foreign_arch());
    let mut host_entry = host.desc();
    host_entry["platform"] = json!({"os": "linux", "architecture": host_arch()});
    let mut other_entry = other.desc();
    other_entry["platform"] = json!({"os": "linux", "architecture": foreign_arch()});
    let nested = index_of(vec![host_entry, other_entry]);
    let mut store = Mem::default();
    for blob in [&nested, &host.manifest, &host.config, &host.layer] {
        store.put(None, &mut blob.as_slice()).unwrap();
    }
    let images = [ExportImage {
        name: "example.com/multi:1".into(),
        target: Descriptor {
            media_type: OCI_INDEX.into(),
            digest: Digest::of(&nested),
            size: nested.len() as i64,
            annotations: BTreeMap::new(),
        },
    }];
    let e = export(Vec::new(), &store, &images, &ExportOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ImageError::NotFound(d) if d.contains(other.digest().hex())),
        "{e:?}"
    );

    let mut out = Vec::new();
    export(
        &mut out,
        &store,
        &images,
        &ExportOptions { skip_missing: true },
    )
    .unwrap();
    let paths: Vec<String> = entries_of(&out).into_iter().map(|e| e.0).collect();
    assert!(paths.contains(&blob_path(&host.layer)));
    assert!(!paths.contains(&blob_path(&other.manifest)));
    // And the partial archive imports.
    let back = import_ok(&out, &mut Mem::default(), &ImportOptions::default());
    assert_eq!(back[0].target.digest, Digest::of(&nested));
}

#[test]
fn export_refuses_missing_and_corrupt_blobs() {
    let (image, archive) = busybox();
    let mut store = Mem::default();
    let images = import_ok(&archive, &mut store, &ImportOptions::default());
    let export_images = [ExportImage {
        name: images[0].name.clone(),
        target: images[0].target.clone(),
    }];

    let mut missing = store.clone();
    missing.blobs.remove(&Digest::of(&image.layer));
    let mut out = Vec::new();
    let e = export(
        &mut out,
        &missing,
        &export_images,
        &ExportOptions { skip_missing: true },
    );
    assert!(matches!(e, Err(ImageError::NotFound(_))), "{e:?}");
    assert!(out.is_empty(), "nothing is written when a blob is missing");

    let mut corrupt = store.clone();
    let layer = corrupt.blobs.get_mut(&Digest::of(&image.layer)).unwrap();
    layer[0] ^= 0xff;
    let mut out = Vec::new();
    let e = export(
        &mut out,
        &corrupt,
        &export_images,
        &ExportOptions::default(),
    );
    assert!(matches!(e, Err(ImageError::DigestMismatch { .. })), "{e:?}");
    assert!(
        import(
            out.as_slice(),
            &mut Mem::default(),
            &ImportOptions::default()
        )
        .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile archives: each a clear error, never a panic.

#[test]
fn refuses_paths_that_escape() {
    let passwd = tar_of(&[file("../../etc/passwd", "root::0:0::/:/bin/sh")]);
    assert_invalid(err_of(&passwd), "../../etc/passwd");
    assert_invalid(err_of(&tar_of(&[file("/etc/passwd", "x")])), "/etc/passwd");
    assert_invalid(
        err_of(&tar_of(&[file("blobs/../../x", "x")])),
        "blobs/../../x",
    );
    assert_invalid(err_of(&tar_of(&[E::Dir("../up/".into())])), "../up");
    // Also after the entries of an otherwise valid archive.
    let (_, archive) = busybox();
    let mut hostile = archive[..archive.len() - 1024].to_vec();
    hostile.extend(tar_of(&[file("a/../../../tmp/evil", "x")]));
    assert_invalid(err_of(&hostile), "tmp/evil");
}

#[test]
fn refuses_a_blob_that_does_not_match_its_name() {
    let image = Image::new("m", host_arch());
    let index = index_of(vec![with_annotations(
        image.desc(),
        &[(IMAGE_NAME, "example.com/m:1")],
    )]);
    let mut blobs = image.blobs();
    blobs[2] = file(blob_path(&image.layer), b"not the layer".to_vec());
    let e = err_of(&oci_archive(&index, blobs));
    match e {
        ImageError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, Digest::of(&image.layer));
            assert_eq!(actual, Digest::of(b"not the layer"));
        }
        other => panic!("{other:?}"),
    }

    // Already stored, but the archive's copy of a manifest lies: refused as well.
    let mut sink = Mem::default();
    sink.put(None, &mut image.manifest.as_slice()).unwrap();
    let lying = oci_archive(
        &index,
        vec![file(
            blob_path(&image.manifest),
            b"{\"lies\":true}".to_vec(),
        )],
    );
    assert!(matches!(
        import(lying.as_slice(), &mut sink, &ImportOptions::default()),
        Err(ImageError::DigestMismatch { .. })
    ));
}

#[test]
fn refuses_an_index_referencing_a_missing_manifest() {
    let image = Image::new("gone", host_arch());
    let index = index_of(vec![with_annotations(
        image.desc(),
        &[(IMAGE_NAME, "example.com/g:1")],
    )]);
    let e = err_of(&oci_archive(&index, vec![]));
    assert_invalid(e, &image.digest().to_string());
    // Unnamed entries are checked too, like containerd walks the whole index.
    let e = err_of(&oci_archive(&index_of(vec![image.desc()]), vec![]));
    assert_invalid(e, "missing");
}

#[test]
fn refuses_oversized_json() {
    let mut big = Vec::from(&b"{\"manifests\":[],\"pad\":\""[..]);
    big.resize(20 << 20, b'x');
    big.extend_from_slice(b"\"}");
    let archive = tar_of(&[
        file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
        file("index.json", big.clone()),
    ]);
    match err_of(&archive) {
        ImageError::TooLarge { what, limit } => {
            assert_eq!(what, "index.json");
            assert_eq!(limit, 16 << 20);
        }
        other => panic!("{other:?}"),
    }
    // A manifest blob too big to hold: stored, but too large to walk.
    let big_manifest = big;
    let index = index_of(vec![with_annotations(
        desc(OCI_MANIFEST, &big_manifest),
        &[(IMAGE_NAME, "example.com/big:1")],
    )]);
    let archive = oci_archive(
        &index,
        vec![file(blob_path(&big_manifest), big_manifest.clone())],
    );
    assert!(matches!(err_of(&archive), ImageError::TooLarge { .. }));
}

#[test]
fn refuses_truncated_streams() {
    let (_, archive) = busybox();
    // Cut inside an entry, at an entry boundary, and just before the end-of-archive marker.
    let boundary = 1024; // After oci-layout: a header and one data block.
    for cut in [archive.len() / 2 + 7, boundary, archive.len() - 1024] {
        let e = err_of(&archive[..cut]);
        assert!(
            matches!(e, ImageError::InvalidArchive(_)),
            "cut at {cut}: {e:?}"
        );
    }
    let gz = gzip(&archive);
    for cut in [gz.len() / 2, gz.len() - 4, gz.len() - 1] {
        let e = err_of(&gz[..cut]);
        assert!(
            matches!(e, ImageError::InvalidArchive(_)),
            "gzip cut at {cut}: {e:?}"
        );
    }
}

#[test]
fn refuses_links_and_devices_under_blobs() {
    let target = "../../../etc/shadow";
    for kind in [
        EntryType::Symlink,
        EntryType::Link,
        EntryType::Char,
        EntryType::Fifo,
    ] {
        let archive = tar_of(&[
            file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
            E::Link(
                format!("blobs/sha256/{}", "a".repeat(64)),
                kind,
                target.into(),
            ),
        ]);
        assert_invalid(err_of(&archive), "blobs/sha256/");
    }
    assert_invalid(
        err_of(&tar_of(&[E::Link(
            "blobs/sha256/x".into(),
            EntryType::Symlink,
            "/etc".into(),
        )])),
        "blobs/sha256/x",
    );
    // Elsewhere, links are ignored (and never followed out of the archive).
    let (_, archive) = busybox();
    let mut with_link = tar_of(&[E::Link("etc".into(), EntryType::Symlink, "/etc".into())]);
    with_link.truncate(with_link.len() - 1024);
    with_link.extend_from_slice(&archive);
    import_ok(&with_link, &mut Mem::default(), &ImportOptions::default());
}

#[test]
fn refuses_garbage_and_empty_input() {
    assert_invalid(err_of(b""), "empty");
    assert!(matches!(
        err_of(&[0u8; 1024]),
        ImageError::InvalidArchive(_)
    ));
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    assert!(matches!(err_of(&garbage), ImageError::InvalidArchive(_)));
    assert!(matches!(
        err_of(b"\x1f\x8bnot gzip at all"),
        ImageError::InvalidArchive(_)
    ));
    // A valid tar of nothing recognisable.
    assert_invalid(err_of(&tar_of(&[file("hello.txt", "hi")])), "unrecognized");
}

#[test]
fn refuses_bad_metadata() {
    let not_json = tar_of(&[file("manifest.json", "this is not json")]);
    match err_of(&not_json) {
        ImageError::Json { what, .. } => assert_eq!(what, "manifest.json"),
        other => panic!("{other:?}"),
    }
    let missing_layer =
        json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["nope/layer.tar"]}]);
    let archive = tar_of(&[
        file("c.json", "{}"),
        file("manifest.json", missing_layer.to_string()),
    ]);
    assert_invalid(err_of(&archive), "nope/layer.tar");
    let escaping = json!([{"Config": "../../etc/passwd", "RepoTags": [], "Layers": []}]);
    assert_invalid(
        err_of(&tar_of(&[file("manifest.json", escaping.to_string())])),
        "not found",
    );
    let bad_tag = json!([{"Config": "c.json", "RepoTags": ["UPPER:case"], "Layers": []}]);
    let archive = tar_of(&[
        file("c.json", "{}"),
        file("manifest.json", bad_tag.to_string()),
    ]);
    assert_invalid(err_of(&archive), "UPPER");

    let version = tar_of(&[
        file("oci-layout", r#"{"imageLayoutVersion":"9.9"}"#),
        file("index.json", "{}"),
    ]);
    assert_invalid(err_of(&version), "9.9");
    let no_index = tar_of(&[file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#)]);
    assert_invalid(err_of(&no_index), "index.json");
    let bad_digest = index_of(vec![
        json!({"mediaType": OCI_MANIFEST, "digest": "sha256:zz", "size": 1}),
    ]);
    assert_invalid(err_of(&oci_archive(&bad_digest, vec![])), "invalid digest");
    let negative = index_of(vec![
        json!({"mediaType": OCI_MANIFEST, "digest": Digest::of(b"x").to_string(), "size": -1}),
    ]);
    assert_invalid(err_of(&oci_archive(&negative, vec![])), "size");
    let stray = oci_archive(&index_of(vec![]), vec![file("blobs/sha256/short", "x")]);
    assert_invalid(err_of(&stray), "blobs/sha256/short");
}

// ---------------------------------------------------------------------------------------------
// Noise: random bytes and randomly damaged archives never panic, and a success is complete.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn damage(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = rng.next() as u8;
            }
            2 => out.truncate(rng.below(out.len() + 1)),
            _ => {
                let at = rng.below(out.len() + 1);
                let junk: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
                out.splice(at..at, junk);
            }
        }
    }
    out
}

#[test]
fn noise_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (_, oci) = busybox();
    let samples = [
        oci.clone(),
        gzip(&oci),
        docker_save().archive,
        gzip(&docker_save().archive),
    ];
    let opts = ImportOptions {
        base_name: Some("noise".into()),
        index_name: Some("noise-index".into()),
        digests: true,
    };
    for round in 0..1500 {
        let input = if round % 5 == 0 {
            (0..rng.below(3000)).map(|_| rng.next() as u8).collect()
        } else {
            let sample = rng.below(samples.len());
            damage(&mut rng, &samples[sample])
        };
        let mut sink = Mem::default();
        if let Ok(images) = import(Cursor::new(&input), &mut sink, &opts) {
            // Whatever was accepted is whole: it exports (which reads every blob it reaches).
            let export_images: Vec<ExportImage> = images
                .iter()
                .map(|i| ExportImage {
                    name: i.name.clone(),
                    target: i.target.clone(),
                })
                .collect();
            export(
                std::io::sink(),
                &sink,
                &export_images,
                &ExportOptions::default(),
            )
            .unwrap_or_else(|e| panic!("round {round}: accepted an incomplete archive: {e}"));
        }
    }
}
