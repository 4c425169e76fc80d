//! Reading and writing images, against layouts and archives built here.
use super::*;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::fs::{self, File};
use std::io::Cursor;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn compress(data: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(Cursor::new(data), 3).unwrap(),
    }
}

fn put_blob(dir: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(d.hex()), data).unwrap();
    d
}

fn config_for(arch: &str, diff_ids: &[Digest]) -> Value {
    json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [],
    })
}

struct Built {
    manifest: Digest,
    manifest_size: usize,
    diff_ids: Vec<Digest>,
    layer_digests: Vec<Digest>,
    tars: Vec<Vec<u8>>,
}

/// Write layer, config and manifest blobs of one image into `dir`.
fn put_image(
    dir: &Path,
    layers: &[(Compression, Vec<u8>)],
    arch: &str,
    tweak: impl FnOnce(&mut Value),
) -> Built {
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    let mut layer_digests = Vec::new();
    for (c, tar) in layers {
        diff_ids.push(Digest::of(tar));
        let blob = compress(tar, *c);
        let d = put_blob(dir, &blob);
        descs.push(json!({
            "mediaType": c.oci_media_type(),
            "digest": d,
            "size": blob.len(),
        }));
        layer_digests.push(d);
    }
    let mut config = config_for(arch, &diff_ids);
    tweak(&mut config);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let cd = put_blob(dir, &config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": { "mediaType": MEDIA_OCI_CONFIG, "digest": cd, "size": config_bytes.len() },
        "layers": descs,
    });
    let mb = serde_json::to_vec(&manifest).unwrap();
    let md = put_blob(dir, &mb);
    Built {
        manifest: md,
        manifest_size: mb.len(),
        diff_ids,
        layer_digests,
        tars: layers.iter().map(|(_, t)| t.clone()).collect(),
    }
}

fn manifest_desc(b: &Built, refname: Option<&str>) -> Value {
    let mut d = json!({
        "mediaType": MEDIA_OCI_MANIFEST,
        "digest": b.manifest,
        "size": b.manifest_size,
    });
    if let Some(r) = refname {
        d["annotations"] = json!({ ANNOTATION_REF_NAME: r });
    }
    d
}

fn write_index(dir: &Path, manifests: Vec<Value>) {
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": manifests });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn three_layers() -> Vec<(Compression, Vec<u8>)> {
    vec![
        (Compression::None, layer_tar(&[("etc/a", b"alpha")])),
        (
            Compression::Gzip,
            layer_tar(&[("etc/b", b"beta"), ("etc/c", b"gamma")]),
        ),
        (Compression::Zstd, layer_tar(&[("usr/d", &[7u8; 5000])])),
    ]
}

/// Read every layer back and compare with the original tars.
fn check_layers(img: &Image, tars: &[Vec<u8>]) {
    assert_eq!(img.layers.len(), tars.len());
    for (i, tar) in tars.iter().enumerate() {
        let mut r = img.open_layer(i).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(&got, tar, "layer {i}");
        assert_eq!(r.finish().unwrap(), tar.len() as u64);
    }
    img.verify_all().unwrap();
}

/// A tar of the regular files under `dir`, names prefixed by `prefix`.
fn tar_dir(dir: &Path, prefix: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, dir: &Path, prefix: &str) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                walk(b, root, &p, prefix);
            } else {
                let data = fs::read(&p).unwrap();
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, format!("{prefix}{rel}"), &data[..])
                    .unwrap();
            }
        }
    }
    walk(&mut b, dir, dir, prefix);
    b.into_inner().unwrap()
}

fn err_text<T: fmt::Debug>(r: Result<T>) -> String {
    let e = r.expect_err("expected an error");
    assert!(matches!(e, Error::Invalid(_)), "not Invalid: {e:?}");
    e.to_string()
}

#[test]
fn digest_parse_and_display() {
    let d = Digest::of(b"hello");
    assert_eq!(
        d.to_string(),
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
    assert_eq!(d.hex().len(), 64);
    let upper = d.as_str().to_uppercase().replace("SHA256", "sha256");
    assert!(Digest::parse(&upper).is_err());
    assert!(Digest::parse("sha256:abc").is_err());
    assert!(Digest::parse("nocolon").is_err());
    let e = Digest::parse(&format!("sha512:{}", "a".repeat(128))).unwrap_err();
    assert!(
        e.to_string().contains("unsupported digest algorithm"),
        "{e}"
    );
    let back: Digest = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(back, d);
    assert!(serde_json::from_str::<Digest>("\"md5:00\"").is_err());
}

#[test]
fn chain_id_vectors() {
    let a = Digest::of(b"A");
    let b = Digest::of(b"B");
    assert_eq!(chain_id(None, &a), a);
    assert_eq!(chain_ids(std::slice::from_ref(&a)), vec![a.clone()]);
    let ab = Digest::of(format!("{a} {b}"));
    assert_eq!(chain_id(Some(&a), &b), ab);
    let ids = chain_ids(&[a.clone(), b.clone(), a.clone()]);
    assert_eq!(
        ids,
        vec![a.clone(), ab.clone(), Digest::of(format!("{ab} {a}"))]
    );
    // Known vector: the string hashed is "sha256:<A> sha256:<B>".
    let s = format!("sha256:{} sha256:{}", a.hex(), b.hex());
    assert_eq!(hex::encode(Sha256::digest(s.as_bytes())), ab.hex());
    assert!(chain_ids(&[]).is_empty());
}

#[test]
fn compression_from_media_type() {
    let f = Compression::from_media_type;
    assert_eq!(f(MEDIA_OCI_LAYER).unwrap(), Some(Compression::None));
    assert_eq!(f(MEDIA_OCI_LAYER_GZIP).unwrap(), Some(Compression::Gzip));
    assert_eq!(f(MEDIA_OCI_LAYER_ZSTD).unwrap(), Some(Compression::Zstd));
    assert_eq!(
        f("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
        Some(Compression::Gzip)
    );
    assert_eq!(f("").unwrap(), None);
    assert_eq!(
        f("application/vnd.docker.image.rootfs.diff.tar").unwrap(),
        None
    );
    assert!(f("application/vnd.oci.image.layer.v1.tar+lz4").is_err());
    assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
    assert_eq!(
        Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
        Compression::Zstd
    );
    assert_eq!(Compression::sniff(b"etc/"), Compression::None);
}

#[test]
fn member_names() {
    let h = "a".repeat(64);
    for ok in [
        "index.json".to_string(),
        "./oci-layout".to_string(),
        format!("blobs/sha256/{h}"),
        format!("./blobs/sha256/{h}"),
        format!("{h}.json"),
        format!("{h}/layer.tar"),
        format!("{h}/VERSION"),
        "repositories".to_string(),
    ] {
        assert!(member_name(ok.as_bytes()).is_some(), "{ok}");
    }
    for bad in [
        "../x".to_string(),
        "/index.json".to_string(),
        format!("blobs/sha256/../../{h}"),
        format!("blobs/sha256/{h}/"),
        format!("blobs/sha512/{h}"),
        format!("blobs/sha256/{}", h.to_uppercase()),
        "blobs/".to_string(),
        format!("{h}/../index.json"),
        "etc/passwd".to_string(),
    ] {
        assert!(member_name(bad.as_bytes()).is_none(), "{bad}");
    }
    assert_eq!(normalize_member("a/../b/./c"), Some("b/c".to_string()));
    assert_eq!(normalize_member("../b"), None);
    assert_eq!(normalize_member("/b"), None);
}

#[test]
fn reference_matching() {
    assert_eq!(
        split_tag("localhost:5000/foo"),
        ("localhost:5000/foo", None)
    );
    assert_eq!(
        split_tag("localhost:5000/foo:1"),
        ("localhost:5000/foo", Some("1"))
    );
    assert_eq!(normalize_ref("docker.io/library/busybox"), "busybox:latest");
    assert_eq!(docker_match("busybox:latest", "busybox"), 1);
    assert_eq!(docker_match("busybox:latest", "busybox:latest"), 2);
    assert_eq!(docker_match("busybox:latest", "alpine"), 0);
}

#[test]
fn open_oci_layout_dir_all_compressions() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let b = put_image(&dir, &three_layers(), "amd64", |_| {});
    write_index(&dir, vec![manifest_desc(&b, Some("example.com/app:1.0"))]);
    let img = open(&dir, None, None, &t.path().join("work")).unwrap();
    assert_eq!(img.reference.as_deref(), Some("example.com/app:1.0"));
    assert_eq!(img.manifest_digest, b.manifest);
    let comps: Vec<Compression> = img.layers.iter().map(|l| l.compression).collect();
    assert_eq!(
        comps,
        [Compression::None, Compression::Gzip, Compression::Zstd]
    );
    assert_eq!(img.diff_ids(), b.diff_ids);
    assert_eq!(img.chain_ids(), chain_ids(&b.diff_ids));
    assert_eq!(img.layers[0].chain_id, b.diff_ids[0]);
    let digests: Vec<Digest> = img.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(digests, b.layer_digests);
    assert_eq!(img.config_json().unwrap()["architecture"], "amd64");
    assert_eq!(Digest::of(&img.config_bytes), img.config_digest);
    check_layers(&img, &b.tars);
    // Directory sources need no temporary directory.
    assert!(!t.path().join("work").exists());
    // Select by full name and by tag.
    assert!(open(&dir, Some("example.com/app:1.0"), None, t.path()).is_ok());
    assert!(open(&dir, Some("1.0"), None, t.path()).is_ok());
    let e = open(&dir, Some("other:2"), None, t.path()).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    assert!(img.open_layer(3).is_err());
}

#[test]
fn open_reads_partially_then_finish_drains() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let b = put_image(&dir, &three_layers(), "amd64", |_| {});
    write_index(&dir, vec![manifest_desc(&b, None)]);
    let img = open(&dir, None, None, t.path()).unwrap();
    assert_eq!(img.reference, None);
    for i in 0..3 {
        // A tar reader stops at the end-of-archive marker.
        let mut r = img.open_layer(i).unwrap();
        let mut ar = tar::Archive::new(&mut r);
        let n = ar.entries().unwrap().count();
        assert!(n >= 1);
        assert_eq!(r.finish().unwrap(), b.tars[i].len() as u64);
    }
}

#[test]
fn open_tar_of_oci_layout() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let b = put_image(&dir, &three_layers(), "amd64", |_| {});
    write_index(&dir, vec![manifest_desc(&b, Some("app:latest"))]);
    let work = t.path().join("work");
    for (prefix, comp) in [
        ("", Compression::None),
        ("./", Compression::None),
        ("", Compression::Gzip),
    ] {
        let archive = t.path().join("image.tar");
        fs::write(&archive, compress(&tar_dir(&dir, prefix), comp)).unwrap();
        let img = open(&archive, Some("app:latest"), None, &work).unwrap();
        assert_eq!(img.reference.as_deref(), Some("app:latest"));
        assert_eq!(img.manifest_digest, b.manifest);
        check_layers(&img, &b.tars);
        // The extraction directory is private and removed on drop.
        let tmp: Vec<_> = fs::read_dir(&work).unwrap().collect();
        assert_eq!(tmp.len(), 1);
        let tmp = tmp[0].as_ref().unwrap().path();
        assert_eq!(
            fs::metadata(&tmp).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(img);
        assert!(!tmp.exists());
    }
}

/// A `docker save` archive of one image with the given layers; the
/// second copy of a repeated layer is a symlink, as docker writes it.
fn docker_save(layers: &[(Compression, Vec<u8>)], tags: &[&str], symlink_dup: bool) -> Vec<u8> {
    let diff_ids: Vec<Digest> = layers.iter().map(|(_, t)| Digest::of(t)).collect();
    let config = serde_json::to_vec(&config_for("amd64", &diff_ids)).unwrap();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    let mut names = Vec::new();
    for (i, (c, tar)) in layers.iter().enumerate() {
        let id = Digest::of(format!("layer-id-{i}"));
        let name = format!("{}/layer.tar", id.hex());
        if symlink_dup && i > 0 && layers[..i].iter().any(|(_, t)| t == tar) {
            let first = layers.iter().position(|(_, t)| t == tar).unwrap();
            let target = format!(
                "../{}/layer.tar",
                Digest::of(format!("layer-id-{first}")).hex()
            );
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, &name, &target).unwrap();
        } else {
            add(&mut b, &format!("{}/VERSION", id.hex()), b"1.0");
            add(&mut b, &name, &compress(tar, *c));
        }
        names.push(name);
    }
    add(&mut b, &config_name, &config);
    let manifest = json!([{ "Config": config_name, "RepoTags": tags, "Layers": names }]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    add(&mut b, "repositories", b"{}");
    b.into_inner().unwrap()
}

#[test]
fn open_docker_save_archive() {
    let t = tempfile::tempdir().unwrap();
    let base = layer_tar(&[("bin/sh", b"#!")]);
    let layers = vec![
        (Compression::None, base.clone()),
        (Compression::Gzip, layer_tar(&[("etc/x", b"x")])),
        (Compression::None, base.clone()),
    ];
    let archive = t.path().join("save.tar");
    fs::write(&archive, docker_save(&layers, &["busybox:latest"], true)).unwrap();
    for name in [
        None,
        Some("busybox:latest"),
        Some("busybox"),
        Some("docker.io/library/busybox"),
    ] {
        let img = open(&archive, name, None, &t.path().join("work")).unwrap();
        assert_eq!(img.reference.as_deref(), Some("busybox:latest"));
        assert_eq!(img.layers[1].compression, Compression::Gzip);
        assert_eq!(img.layers[0].compression, Compression::None);
        assert_eq!(img.layers[0].digest, Digest::of(&base));
        assert_eq!(img.layers[2].digest, Digest::of(&base));
        let tars: Vec<Vec<u8>> = layers.iter().map(|(_, t)| t.clone()).collect();
        check_layers(&img, &tars);
        assert_eq!(img.chain_ids(), chain_ids(&img.diff_ids()));
    }
    let e = open(&archive, Some("alpine"), None, t.path()).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");

    // A config whose content does not match its name.
    let mut data = docker_save(&layers[..1], &["a:1"], false);
    let pos = data.windows(8).position(|w| w == b"\"amd64\",").unwrap();
    data[pos + 1] = b'A';
    fs::write(&archive, &data).unwrap();
    let msg = err_text(open(&archive, None, None, t.path()));
    assert!(msg.contains("digest mismatch"), "{msg}");
}

#[test]
fn docker_25_archive_with_index_and_manifest_json() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("save");
    let b = put_image(&dir, &three_layers(), "amd64", |_| {});
    let mut d = manifest_desc(&b, None);
    d["annotations"] = json!({
        ANNOTATION_CONTAINERD_NAME: "docker.io/library/app:latest",
        ANNOTATION_REF_NAME: "latest",
    });
    write_index(&dir, vec![d]);
    let m: Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(b.manifest.hex())).unwrap())
            .unwrap();
    let config = m["config"]["digest"]
        .as_str()
        .unwrap()
        .replace("sha256:", "blobs/sha256/");
    let layers: Vec<String> = b
        .layer_digests
        .iter()
        .map(|d| format!("blobs/sha256/{}", d.hex()))
        .collect();
    let mj =
        json!([{ "Config": config, "RepoTags": ["app:latest", "other:tag"], "Layers": layers }]);
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&mj).unwrap()).unwrap();

    // Found through index.json.
    let img = open(&dir, Some("app"), None, t.path()).unwrap();
    assert_eq!(
        img.reference.as_deref(),
        Some("docker.io/library/app:latest")
    );
    assert_eq!(img.manifest_digest, b.manifest);
    check_layers(&img, &b.tars);
    // Only manifest.json knows this name: docker-save path, with the
    // content-addressed layer names verified while streaming.
    let img = open(&dir, Some("other:tag"), None, t.path()).unwrap();
    assert_eq!(img.reference.as_deref(), Some("other:tag"));
    assert_eq!(img.layers[2].digest, b.layer_digests[2]);
    assert_eq!(img.layers[2].compression, Compression::Zstd);
    check_layers(&img, &b.tars);
    // A blob named by a digest it does not have fails on read.
    let path = dir.join("blobs/sha256").join(b.layer_digests[0].hex());
    fs::write(&path, layer_tar(&[("etc/a", b"alphX")])).unwrap();
    let img = open(&dir, Some("other:tag"), None, t.path()).unwrap();
    let msg = err_text(img.verify_all());
    assert!(
        msg.contains("layer 1 (") && msg.contains("blob digest mismatch"),
        "{msg}"
    );
}

#[test]
fn docker_save_corrupt_layer_and_diff_id() {
    let t = tempfile::tempdir().unwrap();
    let layers = vec![(Compression::Gzip, layer_tar(&[("a", &[1u8; 3000])]))];
    let dir = t.path().join("extracted");
    fs::create_dir(&dir).unwrap();
    let archive = t.path().join("save.tar");
    fs::write(&archive, docker_save(&layers, &["x:1"], false)).unwrap();
    tar::Archive::new(File::open(&archive).unwrap())
        .unpack(&dir)
        .unwrap();
    // As a directory: the stored digest is computed at open time.
    let img = open(&dir, None, None, t.path()).unwrap();
    img.verify_all().unwrap();
    let layer_path = img.layers[0].path.clone();
    let mut blob = fs::read(&layer_path).unwrap();
    let n = blob.len();
    blob[n - 3] ^= 0xff; // in the gzip trailer: the CRC/size check fails
    fs::write(&layer_path, &blob).unwrap();
    // The digest recorded at open time came from the good copy.
    let msg = err_text(img.verify_all());
    assert!(
        msg.contains("layer 1 (") && msg.contains("digest mismatch"),
        "{msg}"
    );
    drop(img);
    // Reopened, the stored digest is the corrupt one, but the DiffID
    // (or the decompressor) catches it.
    let img = open(&dir, None, None, t.path()).unwrap();
    let msg = err_text(img.verify_all());
    assert!(msg.contains("layer 1 ("), "{msg}");
}

#[test]
fn selection_among_several_images() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let a = put_image(
        &dir,
        &[(Compression::Gzip, layer_tar(&[("a", b"a")]))],
        "amd64",
        |_| {},
    );
    let b = put_image(
        &dir,
        &[(Compression::Gzip, layer_tar(&[("b", b"b")]))],
        "amd64",
        |_| {},
    );
    write_index(
        &dir,
        vec![
            manifest_desc(&a, Some("repo/a:1")),
            manifest_desc(&b, Some("repo/b:2")),
        ],
    );
    let img = open(&dir, Some("repo/b:2"), None, t.path()).unwrap();
    assert_eq!(img.manifest_digest, b.manifest);
    assert_eq!(img.reference.as_deref(), Some("repo/b:2"));
    check_layers(&img, &b.tars);
    let img = open(&dir, Some("1"), None, t.path()).unwrap();
    assert_eq!(img.manifest_digest, a.manifest);
    let msg = err_text(open(&dir, None, None, t.path()));
    assert!(
        msg.contains("repo/a:1") && msg.contains("repo/b:2"),
        "{msg}"
    );

    // Same tag in two repositories: a tag alone is ambiguous.
    write_index(
        &dir,
        vec![
            manifest_desc(&a, Some("repo/a:1")),
            manifest_desc(&b, Some("repo/b:1")),
        ],
    );
    let msg = err_text(open(&dir, Some("1"), None, t.path()));
    assert!(
        msg.contains("repo/a:1") && msg.contains("repo/b:1"),
        "{msg}"
    );
    assert_eq!(
        open(&dir, Some("repo/b:1"), None, t.path())
            .unwrap()
            .manifest_digest,
        b.manifest
    );

    // Bare tags in ref.name (as Docker 25 writes) match a full name.
    write_index(
        &dir,
        vec![manifest_desc(&a, Some("1")), manifest_desc(&b, Some("2"))],
    );
    let img = open(&dir, Some("foo:2"), None, t.path()).unwrap();
    assert_eq!(img.manifest_digest, b.manifest);
}

#[test]
fn multi_arch_index_picks_linux_amd64() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let arm = put_image(
        &dir,
        &[(Compression::Gzip, layer_tar(&[("arm", b"1")]))],
        "arm64",
        |_| {},
    );
    let amd = put_image(
        &dir,
        &[(Compression::Zstd, layer_tar(&[("amd", b"2")]))],
        "amd64",
        |_| {},
    );
    let platform = |b: &Built, arch: &str| {
        let mut d = manifest_desc(b, None);
        d["platform"] = json!({ "architecture": arch, "os": "linux" });
        d
    };
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [platform(&arm, "arm64"), platform(&amd, "amd64")],
    });
    let nb = serde_json::to_vec(&nested).unwrap();
    let nd = put_blob(&dir, &nb);
    write_index(
        &dir,
        vec![json!({
            "mediaType": MEDIA_OCI_INDEX,
            "digest": nd,
            "size": nb.len(),
            "annotations": { ANNOTATION_REF_NAME: "multi:latest" },
        })],
    );
    let img = open(&dir, Some("multi:latest"), None, t.path()).unwrap();
    assert_eq!(img.manifest_digest, amd.manifest);
    assert_eq!(img.config_json().unwrap()["architecture"], "amd64");
    check_layers(&img, &amd.tars);

    // The platforms listed directly in index.json.
    write_index(&dir, vec![platform(&arm, "arm64"), platform(&amd, "amd64")]);
    assert_eq!(
        open(&dir, None, None, t.path()).unwrap().manifest_digest,
        amd.manifest
    );

    // No amd64 in the nested index.
    let nested = json!({ "schemaVersion": 2, "manifests": [platform(&arm, "arm64")] });
    let nb = serde_json::to_vec(&nested).unwrap();
    let nd = put_blob(&dir, &nb);
    write_index(
        &dir,
        vec![json!({ "mediaType": MEDIA_OCI_INDEX, "digest": nd, "size": nb.len() })],
    );
    let msg = err_text(open(&dir, None, None, t.path()));
    assert!(msg.contains("linux/arm64"), "{msg}");
}

#[test]
fn flipped_byte_in_compressed_layer() {
    for comp in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let layers = vec![
            (Compression::None, layer_tar(&[("ok", b"ok")])),
            (comp, layer_tar(&[("big", &[42u8; 20000])])),
        ];
        let b = put_image(&dir, &layers, "amd64", |_| {});
        write_index(&dir, vec![manifest_desc(&b, None)]);
        let path = dir.join("blobs/sha256").join(b.layer_digests[1].hex());
        let mut blob = fs::read(&path).unwrap();
        let mid = blob.len() / 2;
        blob[mid] ^= 0x01;
        fs::write(&path, &blob).unwrap();
        let img = open(&dir, None, None, t.path()).unwrap();
        img.open_layer(0).unwrap().finish().unwrap();
        let mut r = img.open_layer(1).unwrap();
        let _ = r.read_to_end(&mut Vec::new());
        let msg = err_text(r.finish());
        let got = Digest::of(&blob);
        assert!(
            msg.contains(&format!("layer 2 ({})", b.layer_digests[1]))
                && msg.contains("blob digest mismatch")
                && msg.contains(&format!("expected {}", b.layer_digests[1]))
                && msg.contains(&format!("got {got}")),
            "{comp:?}: {msg}"
        );
    }
}

#[test]
fn wrong_diff_id_in_config() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let wrong = Digest::of(b"not the layer");
    let w = wrong.clone();
    let b = put_image(&dir, &three_layers(), "amd64", move |c| {
        c["rootfs"]["diff_ids"][1] = json!(w);
    });
    write_index(&dir, vec![manifest_desc(&b, None)]);
    let img = open(&dir, None, None, t.path()).unwrap();
    img.open_layer(0).unwrap().finish().unwrap();
    let msg = err_text(img.open_layer(1).unwrap().finish());
    assert!(
        msg.contains("layer 2 (")
            && msg.contains("diff_id digest mismatch")
            && msg.contains(&format!("expected {wrong}"))
            && msg.contains(&format!("got {}", b.diff_ids[1])),
        "{msg}"
    );
    assert!(img.verify_all().is_err());
}

#[test]
fn manifest_digest_and_size_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let b = put_image(&dir, &three_layers(), "amd64", |_| {});
    // Content changed under the same name.
    let path = dir.join("blobs/sha256").join(b.manifest.hex());
    let mut m: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    m["annotations"] = json!({ "x": "y" });
    let changed = serde_json::to_vec(&m).unwrap();
    fs::write(&path, &changed).unwrap();
    write_index(&dir, vec![manifest_desc(&b, None)]);
    let msg = err_text(open(&dir, None, None, t.path()));
    assert!(
        msg.contains(&format!("blobs/sha256/{}", b.manifest.hex()))
            && msg.contains("digest mismatch")
            && msg.contains(&format!("expected {}", b.manifest))
            && msg.contains(&format!("got {}", Digest::of(&changed))),
        "{msg}"
    );
    // Right content, wrong size in the descriptor.
    let b = put_image(&dir, &three_layers(), "amd64", |_| {});
    let mut d = manifest_desc(&b, None);
    d["size"] = json!(b.manifest_size + 1);
    write_index(&dir, vec![d]);
    let msg = err_text(open(&dir, None, None, t.path()));
    assert!(msg.contains("size mismatch"), "{msg}");
    // A missing manifest blob.
    let mut d = manifest_desc(&b, None);
    d["digest"] = json!(Digest::of(b"nothing"));
    write_index(&dir, vec![d]);
    let msg = err_text(open(&dir, None, None, t.path()));
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn config_digest_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let b = put_image(&dir, &three_layers(), "amd64", |_| {});
    write_index(&dir, vec![manifest_desc(&b, None)]);
    let img = open(&dir, None, None, t.path()).unwrap();
    let cpath = dir.join("blobs/sha256").join(img.config_digest.hex());
    let mut data = img.config_bytes.clone();
    let pos = data.iter().position(|&c| c == b'4').unwrap(); // in "amd64"
    data[pos] = b'5';
    fs::write(&cpath, &data).unwrap();
    let msg = err_text(open(&dir, None, None, t.path()));
    assert!(
        msg.contains("config blob") && msg.contains("digest mismatch"),
        "{msg}"
    );
}

#[test]
fn layer_count_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let b = put_image(&dir, &three_layers(), "amd64", |c| {
        c["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    });
    write_index(&dir, vec![manifest_desc(&b, None)]);
    let msg = err_text(open(&dir, None, None, t.path()));
    assert!(
        msg.contains("2 rootfs.diff_ids") && msg.contains("3 layers"),
        "{msg}"
    );
}

#[test]
fn not_an_image() {
    let t = tempfile::tempdir().unwrap();
    let msg = err_text(open(t.path(), None, None, t.path()));
    assert!(msg.contains("not an OCI image layout"), "{msg}");
    let junk = t.path().join("junk");
    fs::write(&junk, vec![0x55u8; 1000]).unwrap();
    assert!(open(&junk, None, None, &t.path().join("w")).is_err());
    // Nothing left behind by a failed open.
    assert_eq!(fs::read_dir(t.path().join("w")).unwrap().count(), 0);
}

/// Append a member with a raw name (bypassing tar's own checks).
fn raw_member(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname = [0; 100];
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn hostile_tar_members_stay_inside() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let b = put_image(&dir, &three_layers(), "amd64", |_| {});
    write_index(&dir, vec![manifest_desc(&b, None)]);
    let base = t.path().join("base");
    let work = base.join("work");
    fs::create_dir_all(&work).unwrap();
    let secret = t.path().join("secret");
    fs::write(&secret, b"secret").unwrap();
    let h = "b".repeat(64);

    let mut ar = tar::Builder::new(Vec::new());
    raw_member(&mut ar, "../x", tar::EntryType::Regular, None, b"evil");
    raw_member(&mut ar, "../../x", tar::EntryType::Regular, None, b"evil");
    raw_member(
        &mut ar,
        &format!("blobs/sha256/../../x{}", &h[..40]),
        tar::EntryType::Regular,
        None,
        b"evil",
    );
    raw_member(
        &mut ar,
        "/tmp/dmctl-oci-test-evil",
        tar::EntryType::Regular,
        None,
        b"evil",
    );
    // A symlink then a file through it.
    raw_member(&mut ar, "blobs", tar::EntryType::Symlink, Some(".."), b"");
    raw_member(
        &mut ar,
        &format!("{h}/layer.tar"),
        tar::EntryType::Symlink,
        Some(secret.to_str().unwrap()),
        b"",
    );
    raw_member(
        &mut ar,
        &format!("{h}.json"),
        tar::EntryType::Link,
        Some("../secret"),
        b"",
    );
    raw_member(&mut ar, "x", tar::EntryType::Directory, None, b"");
    let layout = tar_dir(&dir, "");
    let mut inner = tar::Archive::new(&layout[..]);
    for e in inner.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().to_vec()).unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        raw_member(&mut ar, &name, tar::EntryType::Regular, None, &data);
    }
    // A symlink named like a wanted file, pointing outside.
    raw_member(
        &mut ar,
        "repositories",
        tar::EntryType::Symlink,
        Some("/etc/passwd"),
        b"",
    );
    let archive = t.path().join("hostile.tar");
    fs::write(&archive, ar.into_inner().unwrap()).unwrap();

    let before: Vec<_> = walk_all(t.path());
    let img = open(&archive, None, None, &work).unwrap();
    check_layers(&img, &b.tars);
    let tmp = img._tmp.as_ref().unwrap().path().to_path_buf();
    // Only regular files and directories, only the wanted names.
    for p in walk_all(&tmp) {
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.is_file() || m.is_dir(), "{}", p.display());
        let rel = p.strip_prefix(&tmp).unwrap().to_str().unwrap().to_string();
        assert!(
            allowed_name(&rel) || rel == "blobs" || rel == "blobs/sha256",
            "{rel}"
        );
    }
    assert!(!tmp.join(format!("{h}/layer.tar")).exists());
    assert!(!tmp.join("repositories").exists());
    drop(img);
    let after: Vec<_> = walk_all(t.path());
    assert_eq!(before, after);
    assert!(!Path::new("/tmp/dmctl-oci-test-evil").exists());
    assert_eq!(fs::read(&secret).unwrap(), b"secret");
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn duplicate_member_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let mut ar = tar::Builder::new(Vec::new());
    raw_member(&mut ar, "index.json", tar::EntryType::Regular, None, b"{}");
    raw_member(
        &mut ar,
        "./index.json",
        tar::EntryType::Regular,
        None,
        b"{}",
    );
    let archive = t.path().join("dup.tar");
    fs::write(&archive, ar.into_inner().unwrap()).unwrap();
    let msg = err_text(open(&archive, None, None, &t.path().join("w")));
    assert!(msg.contains("duplicate"), "{msg}");
    assert_eq!(fs::read_dir(t.path().join("w")).unwrap().count(), 0);
}

#[test]
fn write_layout_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let tars = [
        layer_tar(&[("etc/base", b"base")]),
        layer_tar(&[("etc/top", b"top")]),
    ];
    let mut layers = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let p = src.join(format!("l{i}.tar"));
        fs::write(&p, tar).unwrap();
        layers.push(ExportLayer {
            tar_path: p,
            diff_id: Digest::of(tar),
        });
    }
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let parent = config_for("arm64", &diff_ids[..1]);
    let config = new_config(Some(&parent), &diff_ids, "dmctl commit");
    let out = t.path().join("out");
    let md = write_layout(&out, "app:1", &config, &layers).unwrap();
    let mode = fs::metadata(out.join("blobs/sha256").join(diff_ids[0].hex()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    let img = open(&out, Some("app:1"), None, t.path()).unwrap();
    assert_eq!(img.manifest_digest, md);
    assert_eq!(img.reference.as_deref(), Some("app:1"));
    assert_eq!(img.chain_ids(), chain_ids(&diff_ids));
    assert_eq!(img.config_bytes, config);
    for l in &img.layers {
        assert_eq!(l.digest, l.diff_id);
        assert_eq!(l.compression, Compression::None);
        assert_eq!(l.media_type, MEDIA_OCI_LAYER);
    }
    check_layers(&img, &tars);
    let cfg = img.config_json().unwrap();
    assert_eq!(cfg["architecture"], "arm64");
    assert_eq!(cfg["config"]["Env"][0], "PATH=/bin");
    assert_eq!(cfg["history"][0]["created_by"], "dmctl commit");
    drop(img);

    // A second image (the base alone) and a re-write of the first.
    let base_cfg = new_config(None, &diff_ids[..1], "base");
    write_layout(&out, "base:1", &base_cfg, &layers[..1]).unwrap();
    assert_eq!(write_layout(&out, "app:1", &config, &layers).unwrap(), md);
    let index: Value = serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    let base = open(&out, Some("base:1"), None, t.path()).unwrap();
    assert_eq!(base.chain_ids(), vec![diff_ids[0].clone()]);
    assert_eq!(base.config_json().unwrap()["architecture"], "amd64");
    base.verify_all().unwrap();
    let msg = err_text(open(&out, None, None, t.path()));
    assert!(msg.contains("app:1") && msg.contains("base:1"), "{msg}");

    // The tar of the layout opens as well.
    let archive = t.path().join("out.tar");
    fs::write(&archive, tar_dir(&out, "")).unwrap();
    let img = open(&archive, Some("app:1"), None, &t.path().join("w")).unwrap();
    assert_eq!(img.chain_ids(), chain_ids(&diff_ids));
    img.verify_all().unwrap();

    // Leftover temporaries: none.
    for p in walk_all(&out) {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(!name.starts_with('.'), "{name}");
    }
}

#[test]
fn write_layout_refuses_mismatches() {
    let t = tempfile::tempdir().unwrap();
    let tar = layer_tar(&[("f", b"f")]);
    let p = t.path().join("l.tar");
    fs::write(&p, &tar).unwrap();
    let good = ExportLayer {
        tar_path: p.clone(),
        diff_id: Digest::of(&tar),
    };
    let out = t.path().join("out");
    // Config diff_ids disagree with the layers.
    let config = new_config(None, &[Digest::of(b"other")], "x");
    let msg = err_text(write_layout(
        &out,
        "a:1",
        &config,
        std::slice::from_ref(&good),
    ));
    assert!(msg.contains("diff_ids"), "{msg}");
    // The tar on disk is not what its diff_id says.
    let bad = ExportLayer {
        tar_path: p,
        diff_id: Digest::of(b"other"),
    };
    let msg = err_text(write_layout(&out, "a:1", &config, &[bad]));
    assert!(msg.contains("digest mismatch"), "{msg}");
    assert!(!out.join("index.json").exists());
    assert!(!out
        .join("blobs/sha256")
        .join(Digest::of(b"other").hex())
        .exists());
    assert_eq!(fs::read_dir(out.join("blobs/sha256")).unwrap().count(), 0);
    assert!(err_text(write_layout(&out, "", &config, &[])).contains("reference"));
}

#[test]
fn new_config_defaults() {
    let ids = [Digest::of(b"1")];
    let c: Value = serde_json::from_slice(&new_config(None, &ids, "hello")).unwrap();
    assert_eq!(c["architecture"], "amd64");
    assert_eq!(c["os"], "linux");
    assert_eq!(
        c["rootfs"],
        json!({ "type": "layers", "diff_ids": [ids[0]] })
    );
    assert_eq!(c["history"], json!([{ "created_by": "hello" }]));
    assert!(c.get("config").is_none());
    let mut parent = config_for("arm64", &ids);
    parent["history"] = json!([{ "created_by": "first" }]);
    let c: Value = serde_json::from_slice(&new_config(Some(&parent), &ids, "noop")).unwrap();
    assert_eq!(c["history"][0]["created_by"], "first");
    assert_eq!(
        c["history"][1],
        json!({ "created_by": "noop", "empty_layer": true })
    );
}

#[test]
fn readers_are_send() {
    fn is_send<T: Send>() {}
    is_send::<LayerReader>();
    is_send::<Image>();
}
