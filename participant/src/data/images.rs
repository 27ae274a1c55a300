//! Reader for image folders: one sub-folder per class, each holding that class's PNG or JPEG
//! images (the layout torchvision's `ImageFolder` reads). Images become [`Examples`] with
//! features `[channels, height, width]` in `[0, 1]`, so that a partner site can train on a
//! folder of scans without converting it first.
//!
//! What counts, so that every site reads the same folder the same way:
//! - classes are the sorted names of `root`'s sub-folders; plain files at the top level (a
//!   README, a licence) and hidden entries (names starting with `.`, such as
//!   `.ipynb_checkpoints`) are ignored;
//! - a class's images are the files of its folder ending in `.png`, `.jpg` or `.jpeg` (any
//!   case), sorted by name; other files, hidden files and nested folders are ignored;
//! - the format is told by the file's content, not its name, so a mislabelled JPEG still reads.

use super::{Examples, Targets};
use crate::Error;
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// How images are turned into features.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFolderOptions {
    /// `(width, height)` to resize every image to, with a triangle (bilinear) filter; `None`
    /// keeps the images' own size, which must then be the same for all.
    pub size: Option<(u32, u32)>,
    /// One grey channel (luma) instead of three RGB channels; alpha is dropped either way.
    pub grayscale: bool,
}

/// The filter for [`ImageFolderOptions::size`]: bilinear, which averages over the source pixels
/// a target pixel covers, so downscaling does not alias, and costs little.
const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// Reads an image folder (one sub-folder per class) into examples: features `[channels, height,
/// width]` scaled to `[0, 1]` (channels 1 for grayscale, 3 for RGB), no feature names, and class
/// targets named after the sub-folders. See the module documentation for what is read.
pub fn read_image_folder(root: &Path, options: &ImageFolderOptions) -> Result<Examples, Error> {
    let data_error = |path: &Path, reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    const LAYOUT: &str =
        "expected a folder with one sub-folder per class, each holding its PNG or JPEG images";
    match std::fs::metadata(root) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return Err(data_error(root, format!("is not a directory; {LAYOUT}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(data_error(root, format!("does not exist; {LAYOUT}")));
        }
        Err(source) => {
            return Err(Error::Io {
                what: format!("reading image folder {}", root.display()),
                source,
            });
        }
    }
    if let Some((width, height)) = options.size
        && (width == 0 || height == 0)
    {
        return Err(data_error(
            root,
            format!("the requested image size is {width}x{height}; both must be positive"),
        ));
    }

    let class_dirs: Vec<(String, PathBuf)> = list(root)?
        .into_iter()
        .filter(|(_, path)| path.is_dir())
        .collect();
    if class_dirs.is_empty() {
        return Err(data_error(
            root,
            format!("holds no class sub-folder; {LAYOUT}"),
        ));
    }

    let channels: usize = if options.grayscale { 1 } else { 3 };
    let mut features = Vec::new();
    let mut labels = Vec::new();
    // The first image's path and size, against which the others are checked when not resized.
    let mut first: Option<(PathBuf, (u32, u32))> = None;
    for (label, (class, class_dir)) in class_dirs.iter().enumerate() {
        let images: Vec<PathBuf> = list(class_dir)?
            .into_iter()
            .filter(|(name, path)| is_image_name(name) && path.is_file())
            .map(|(_, path)| path)
            .collect();
        if images.is_empty() {
            return Err(data_error(
                root,
                format!(
                    "class {class:?} ({}) holds no PNG or JPEG image (.png, .jpg or .jpeg)",
                    class_dir.display()
                ),
            ));
        }
        for path in images {
            let decoded = image::ImageReader::open(&path)
                .map_err(|source| Error::Io {
                    what: format!("opening image {}", path.display()),
                    source,
                })?
                .with_guessed_format()
                .map_err(|source| Error::Io {
                    what: format!("reading image {}", path.display()),
                    source,
                })?
                .decode()
                .map_err(|e| {
                    data_error(&path, format!("is not a readable PNG or JPEG image: {e}"))
                })?;
            let size = (decoded.width(), decoded.height());
            match (&first, options.size) {
                (None, _) => first = Some((path.clone(), size)),
                (Some((first_path, first_size)), None) if *first_size != size => {
                    return Err(data_error(
                        &path,
                        format!(
                            "is {}x{} (width x height), but the first image, {}, is {}x{}; \
                             set a size to resize every image to it",
                            size.0,
                            size.1,
                            first_path.display(),
                            first_size.0,
                            first_size.1
                        ),
                    ));
                }
                _ => {}
            }
            // Interleaved (height, width, channel) bytes, converted first so that the resize
            // works on the channels the model will see.
            let (pixels, (width, height)) = if options.grayscale {
                let gray = decoded.to_luma8();
                let gray = match options.size {
                    Some((w, h)) if (w, h) != size => {
                        image::imageops::resize(&gray, w, h, RESIZE_FILTER)
                    }
                    _ => gray,
                };
                let dimensions = gray.dimensions();
                (gray.into_raw(), dimensions)
            } else {
                let rgb = decoded.to_rgb8();
                let rgb = match options.size {
                    Some((w, h)) if (w, h) != size => {
                        image::imageops::resize(&rgb, w, h, RESIZE_FILTER)
                    }
                    _ => rgb,
                };
                let dimensions = rgb.dimensions();
                (rgb.into_raw(), dimensions)
            };
            let n_pixels = width as usize * height as usize;
            // To channel-major (CHW), PyTorch's order, which the models expect.
            for channel in 0..channels {
                features.extend(
                    pixels[channel..]
                        .iter()
                        .step_by(channels)
                        .take(n_pixels)
                        .map(|&p| f32::from(p) / 255.0),
                );
            }
            labels.push(label as u32);
        }
    }

    let (width, height) = match (options.size, &first) {
        (Some(size), _) => size,
        (None, Some((_, size))) => *size,
        // Unreachable: every class holds at least one image, checked above.
        (None, None) => (0, 0),
    };
    Ok(Examples {
        feature_shape: vec![channels, height as usize, width as usize],
        feature_names: Vec::new(),
        features,
        targets: Targets::Classes {
            labels,
            classes: class_dirs.into_iter().map(|(class, _)| class).collect(),
        },
    })
}

/// Whether a file name ends in `.png`, `.jpg` or `.jpeg`, in any case.
fn is_image_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| {
            ["png", "jpg", "jpeg"]
                .iter()
                .any(|x| e.eq_ignore_ascii_case(x))
        })
}

/// The non-hidden entries of `dir` as (name, path), sorted by name so that every site reads
/// them in the same order. A name that is not UTF-8 is refused: it could not name a class.
fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let io_error = |source| Error::Io {
        what: format!("listing image folder {}", dir.display()),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|raw| Error::Data {
            path: path.clone(),
            reason: format!("the name {raw:?} is not valid UTF-8"),
        })?;
        if !name.starts_with('.') {
            entries.push((name, path));
        }
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn folder(root: &Path, class: &str) -> PathBuf {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn gray(dir: &Path, name: &str, size: u32, value: u8) {
        GrayImage::from_pixel(size, size, Luma([value]))
            .save(dir.join(name))
            .unwrap();
    }

    fn error(root: &Path, options: &ImageFolderOptions) -> String {
        read_image_folder(root, options).unwrap_err().to_string()
    }

    #[test]
    fn reads_classes_in_order_with_chw_grayscale_values() {
        let dir = tempfile::tempdir().unwrap();
        let dog = folder(dir.path(), "dog");
        let cat = folder(dir.path(), "cat");
        // Sorted by name: b.png before c.PNG in "dog".
        GrayImage::from_fn(4, 4, |x, y| Luma([(y * 4 + x) as u8 * 10]))
            .save(dog.join("c.PNG"))
            .unwrap();
        gray(&dog, "b.png", 4, 255);
        gray(&cat, "a.png", 4, 0);
        std::fs::write(dog.join("notes.txt"), "not an image").unwrap();
        std::fs::write(dir.path().join("README"), "plain file, ignored").unwrap();
        folder(dir.path(), ".hidden");

        let options = ImageFolderOptions {
            size: None,
            grayscale: true,
        };
        let examples = read_image_folder(dir.path(), &options).unwrap();
        assert_eq!(examples.feature_shape, vec![1, 4, 4]);
        assert!(examples.feature_names.is_empty());
        assert_eq!(
            examples.targets,
            Targets::Classes {
                labels: vec![0, 1, 1],
                classes: vec!["cat".into(), "dog".into()],
            }
        );
        assert!(examples.features_of(0).iter().all(|&v| v == 0.0));
        assert!(examples.features_of(1).iter().all(|&v| v == 1.0));
        let ramp: Vec<f32> = (0..16).map(|i| (i * 10) as f32 / 255.0).collect();
        assert_eq!(examples.features_of(2), ramp.as_slice());
    }

    #[test]
    fn rgb_images_are_channel_major() {
        let dir = tempfile::tempdir().unwrap();
        let red = folder(dir.path(), "red");
        // Pixel (x, y) holds (x, y, 200): the R plane varies along rows, the G plane down columns.
        RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8, y as u8, 200]))
            .save(red.join("a.png"))
            .unwrap();
        let examples = read_image_folder(dir.path(), &ImageFolderOptions::default()).unwrap();
        assert_eq!(examples.feature_shape, vec![3, 2, 3]);
        let expected: Vec<f32> = [0, 1, 2, 0, 1, 2, 0, 0, 0, 1, 1, 1]
            .into_iter()
            .chain([200; 6])
            .map(|v| v as f32 / 255.0)
            .collect();
        assert_eq!(examples.features, expected);
    }

    #[test]
    fn resizing_gives_every_image_the_requested_size() {
        let dir = tempfile::tempdir().unwrap();
        let a = folder(dir.path(), "a");
        let b = folder(dir.path(), "b");
        gray(&a, "small.png", 4, 100);
        gray(&b, "large.png", 6, 200);
        // RGB on disk, read as grayscale; JPEG with an upper-case extension.
        RgbImage::from_pixel(6, 6, Rgb([50, 50, 50]))
            .save_with_format(b.join("photo.JPG"), image::ImageFormat::Jpeg)
            .unwrap();
        let options = ImageFolderOptions {
            size: Some((5, 3)),
            grayscale: true,
        };
        let examples = read_image_folder(dir.path(), &options).unwrap();
        assert_eq!(examples.feature_shape, vec![1, 3, 5]);
        assert_eq!(examples.len(), 3);
        assert_eq!(examples.features.len(), 3 * 15);
        // A flat image stays flat through the filter; JPEG may move a value by a step or two.
        for (index, value) in [(0, 100.0), (1, 200.0), (2, 50.0)] {
            for &v in examples.features_of(index) {
                assert!((v * 255.0 - value).abs() <= 2.0, "{index}: {v}");
            }
        }
        assert_eq!(examples.targets.labels(), Some(&[0, 1, 1][..]));

        let options = ImageFolderOptions {
            size: Some((0, 3)),
            grayscale: true,
        };
        assert!(error(dir.path(), &options).contains("both must be positive"));
    }

    #[test]
    fn mixed_sizes_without_a_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        gray(&folder(dir.path(), "a"), "small.png", 4, 0);
        gray(&folder(dir.path(), "b"), "large.png", 6, 0);
        let err = error(dir.path(), &ImageFolderOptions::default());
        assert!(err.contains("large.png: is 6x6 (width x height)"), "{err}");
        assert!(err.contains("small.png, is 4x4; set a size"), "{err}");
    }

    #[test]
    fn missing_root_and_plain_file_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let err = error(&missing, &ImageFolderOptions::default());
        assert!(err.contains("nowhere: does not exist"), "{err}");
        let file = dir.path().join("file.png");
        std::fs::write(&file, "x").unwrap();
        let err = error(&file, &ImageFolderOptions::default());
        assert!(err.contains("file.png: is not a directory"), "{err}");
    }

    #[test]
    fn a_root_without_class_folders_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        gray(dir.path(), "loose.png", 4, 0);
        let err = error(dir.path(), &ImageFolderOptions::default());
        assert!(err.contains("holds no class sub-folder"), "{err}");
    }

    #[test]
    fn a_class_without_images_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        gray(&folder(dir.path(), "dog"), "a.png", 4, 0);
        let cat = folder(dir.path(), "cat");
        std::fs::write(cat.join("a.gif"), "x").unwrap();
        let err = error(dir.path(), &ImageFolderOptions::default());
        assert!(
            err.contains(&format!(
                "class \"cat\" ({}) holds no PNG or JPEG image",
                cat.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_image_names_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cat = folder(dir.path(), "cat");
        gray(&cat, "a.png", 4, 0);
        // A real PNG cut short: the decoder recognises the format, then fails.
        let bytes = std::fs::read(cat.join("a.png")).unwrap();
        std::fs::write(cat.join("b.png"), &bytes[..bytes.len() / 2]).unwrap();
        std::fs::write(cat.join("c.jpg"), "not a jpeg at all").unwrap();
        let err = error(dir.path(), &ImageFolderOptions::default());
        assert!(
            err.contains("b.png: is not a readable PNG or JPEG image: "),
            "{err}"
        );
        std::fs::remove_file(cat.join("b.png")).unwrap();
        let err = error(dir.path(), &ImageFolderOptions::default());
        assert!(
            err.contains("c.jpg: is not a readable PNG or JPEG image: "),
            "{err}"
        );
    }
}
