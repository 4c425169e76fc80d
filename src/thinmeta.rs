//! Reading the kernel's pool metadata through `thin_dump` (XML): which thin
//! ids exist and how many blocks each maps. Used by `dmctl check`.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinDevice {
    pub dev_id: u32,
    pub mapped_blocks: u64,
    pub transaction: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinDump {
    pub transaction: u64,
    pub data_block_size: u64,
    pub devices: Vec<ThinDevice>,
}

/// The value of `name="..."` in one XML start tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

fn num<T: std::str::FromStr>(tag: &str, name: &str) -> Result<T> {
    attr(tag, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("thin_dump: tag without a numeric {name}: {tag}")))
}

/// Parse `thin_dump` XML (with or without `--skip-mappings`).
pub fn parse_thin_dump(xml: &str) -> Result<ThinDump> {
    let mut dump: Option<ThinDump> = None;
    for line in xml.lines() {
        let tag = line.trim();
        if tag.starts_with("<superblock ") {
            dump = Some(ThinDump {
                transaction: num(tag, "transaction")?,
                data_block_size: num(tag, "data_block_size")?,
                devices: vec![],
            });
        } else if tag.starts_with("<device ") {
            let d = dump
                .as_mut()
                .ok_or_else(|| Error::Invalid("thin_dump: device before superblock".into()))?;
            d.devices.push(ThinDevice {
                dev_id: num(tag, "dev_id")?,
                mapped_blocks: num(tag, "mapped_blocks")?,
                transaction: num(tag, "transaction")?,
            });
        }
    }
    dump.ok_or_else(|| Error::Invalid("thin_dump: no superblock in its output".into()))
}

/// One past the highest origin block mapped in `thin_dump` XML.
pub fn highest_mapped_block(xml: &str) -> u64 {
    let num = |tag: &str, name: &str| -> Option<u64> {
        let key = format!(" {name}=\"");
        let start = tag.find(&key)? + key.len();
        let len = tag[start..].find('"')?;
        tag[start..start + len].parse().ok()
    };
    let mut end = 0;
    for line in xml.lines() {
        let tag = line.trim();
        if tag.starts_with("<range_mapping ") {
            if let (Some(b), Some(l)) = (num(tag, "origin_begin"), num(tag, "length")) {
                end = end.max(b + l);
            }
        } else if tag.starts_with("<single_mapping ") {
            if let Some(b) = num(tag, "origin_block") {
                end = end.max(b + 1);
            }
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<superblock uuid="" time="2" transaction="3" version="2" data_block_size="128" nr_data_blocks="163840">
  <device dev_id="0" mapped_blocks="2105" transaction="0" creation_time="0" snap_time="2">
  </device>
  <device dev_id="1" mapped_blocks="2106" transaction="1" creation_time="1" snap_time="2">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
  </device>
</superblock>
"#;

    #[test]
    fn parses_superblock_and_devices() {
        let d = parse_thin_dump(XML).unwrap();
        assert_eq!(d.transaction, 3);
        assert_eq!(d.data_block_size, 128);
        assert_eq!(
            d.devices,
            vec![
                ThinDevice {
                    dev_id: 0,
                    mapped_blocks: 2105,
                    transaction: 0
                },
                ThinDevice {
                    dev_id: 1,
                    mapped_blocks: 2106,
                    transaction: 1
                },
            ]
        );
    }

    #[test]
    fn empty_pool_has_no_devices() {
        let d = parse_thin_dump(
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"16\">\n</superblock>\n",
        )
        .unwrap();
        assert!(d.devices.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "<device dev_id=\"1\">",
            "<superblock transaction=\"x\">",
            "<superblock ",
        ] {
            assert!(parse_thin_dump(bad).is_err(), "{bad:?}");
        }
    }
    #[test]
    fn highest_mapped_block_of_dump() {
        let xml = r#"<superblock>
  <device dev_id="1" mapped_blocks="5">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="9" data_block="7" time="0"/>
  </device>
</superblock>"#;
        assert_eq!(highest_mapped_block(xml), 10);
        assert_eq!(highest_mapped_block(""), 0);
    }
}
