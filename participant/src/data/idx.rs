//! Reader for gzip-compressed IDX files (LeCun's MNIST format): a big-endian header with a magic
//! number `0x00000803` (images, 3 dimensions) or `0x00000801` (labels, 1 dimension), the
//! dimensions as u32, then unsigned bytes. burn's MNIST dataset only downloads, so we read the
//! local files ourselves; the format is small enough that a library would not pay for itself.

use crate::Error;
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
/// Larger than any image set we mean to read (MNIST's training images are 47 MB): a corrupt
/// header must not make us allocate gigabytes.
const MAX_PAYLOAD_BYTES: u64 = 1 << 31;

/// Images read from an IDX file.
#[derive(Debug)]
pub struct Images {
    /// Number of images.
    pub count: usize,
    /// Height.
    pub rows: usize,
    /// Width.
    pub cols: usize,
    /// `count * rows * cols` bytes.
    pub pixels: Vec<u8>,
}

/// Reads an IDX3 image file (gzip-compressed).
pub fn read_images(path: &Path) -> Result<Images, Error> {
    let (dims, pixels) = read_idx(path, IMAGES_MAGIC, 3)?;
    let [count, rows, cols] = [dims[0], dims[1], dims[2]];
    if rows == 0 || cols == 0 {
        return Err(data_error(
            path,
            format!("images are {rows}x{cols}, expected non-zero sizes"),
        ));
    }
    Ok(Images {
        count,
        rows,
        cols,
        pixels,
    })
}

/// Reads an IDX1 label file (gzip-compressed).
pub fn read_labels(path: &Path) -> Result<Vec<u8>, Error> {
    Ok(read_idx(path, LABELS_MAGIC, 1)?.1)
}

fn data_error(path: &Path, reason: String) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason,
    }
}

fn read_idx(path: &Path, magic: u32, n_dims: usize) -> Result<(Vec<usize>, Vec<u8>), Error> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        what: format!("opening data file {}", path.display()),
        source,
    })?;
    let mut reader = GzDecoder::new(std::io::BufReader::new(file));
    let mut read_exact = |buffer: &mut [u8], what: &str| {
        reader.read_exact(buffer).map_err(|e| {
            data_error(
                path,
                format!("cannot read {what} ({e}); is it a gzip-compressed IDX file?"),
            )
        })
    };
    let mut magic_bytes = [0u8; 4];
    read_exact(&mut magic_bytes, "the IDX magic number")?;
    let found = u32::from_be_bytes(magic_bytes);
    if found != magic {
        return Err(data_error(
            path,
            format!("IDX magic number is {found:#010x}, expected {magic:#010x}"),
        ));
    }
    let mut header = vec![0u8; 4 * n_dims];
    read_exact(&mut header, "the IDX dimensions")?;
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let size = dims
        .iter()
        .try_fold(1u64, |p, &d| p.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    if size > MAX_PAYLOAD_BYTES {
        return Err(data_error(
            path,
            format!(
                "header announces {size} bytes of data, more than the {MAX_PAYLOAD_BYTES} allowed"
            ),
        ));
    }
    let mut payload = vec![0u8; size as usize];
    read_exact(
        &mut payload,
        &format!("{size} bytes of data announced by the header (file truncated?)"),
    )?;
    let mut rest = [0u8; 1];
    match reader.read(&mut rest) {
        Ok(0) => Ok((dims, payload)),
        Ok(_) => Err(data_error(
            path,
            format!("has data after the {size} bytes its header announces"),
        )),
        Err(e) => Err(data_error(path, format!("is corrupt after its data: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn write_gz(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut encoder =
            GzEncoder::new(std::fs::File::create(&path).unwrap(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap();
        path
    }

    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut bytes = magic.to_be_bytes().to_vec();
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend(payload);
        bytes
    }

    #[test]
    fn reads_images_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..2 * 3 * 4).collect();
        let path = write_gz(dir.path(), "i.gz", &idx(IMAGES_MAGIC, &[2, 3, 4], &pixels));
        let images = read_images(&path).unwrap();
        assert_eq!((images.count, images.rows, images.cols), (2, 3, 4));
        assert_eq!(images.pixels, pixels);
        let path = write_gz(dir.path(), "l.gz", &idx(LABELS_MAGIC, &[3], &[7, 0, 9]));
        assert_eq!(read_labels(&path).unwrap(), vec![7, 0, 9]);
    }

    #[test]
    fn truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_gz(dir.path(), "i.gz", &idx(IMAGES_MAGIC, &[2, 3, 4], &[0; 20]));
        let err = read_images(&path).unwrap_err().to_string();
        assert!(
            err.contains("24 bytes of data announced by the header"),
            "{err}"
        );
    }

    #[test]
    fn truncated_gzip_stream_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_gz(
            dir.path(),
            "i.gz",
            &idx(IMAGES_MAGIC, &[50, 28, 28], &[1; 50 * 784]),
        );
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(read_images(&path).is_err());
    }

    #[test]
    fn wrong_magic_and_uncompressed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_gz(dir.path(), "l.gz", &idx(LABELS_MAGIC, &[3], &[1, 2, 3]));
        let err = read_images(&path).unwrap_err().to_string();
        assert!(
            err.contains("magic number is 0x00000801, expected 0x00000803"),
            "{err}"
        );
        let plain = dir.path().join("plain");
        std::fs::write(&plain, idx(LABELS_MAGIC, &[3], &[1, 2, 3])).unwrap();
        let err = read_labels(&plain).unwrap_err().to_string();
        assert!(err.contains("gzip"), "{err}");
    }

    #[test]
    fn trailing_data_and_huge_headers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_gz(dir.path(), "l.gz", &idx(LABELS_MAGIC, &[2], &[1, 2, 3]));
        assert!(
            read_labels(&path)
                .unwrap_err()
                .to_string()
                .contains("data after")
        );
        let path = write_gz(
            dir.path(),
            "i.gz",
            &idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, 2], &[]),
        );
        assert!(
            read_images(&path)
                .unwrap_err()
                .to_string()
                .contains("more than")
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_labels(Path::new("/nonexistent/labels.gz"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/labels.gz"), "{err}");
    }
}
