//! The artefact store: source archives, archived job logs and SBOMs in an S3-compatible bucket.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;

use crate::{S3Config, StepError};

#[derive(Clone)]
pub struct ArtefactStore {
    client: Client,
    bucket: String,
}

fn s3_error(what: &str, key: &str, e: impl std::fmt::Display) -> StepError {
    // aws-sdk errors print as "service error"; the source chain holds the cause.
    StepError::transient(format!(
        "artefact store: {what} `{key}` failed: {e}; check ENCLII_S3_* settings and that the S3 server is up"
    ))
}

impl ArtefactStore {
    /// Connects and creates the bucket when it does not exist yet.
    pub async fn connect(config: &S3Config) -> Result<Self, StepError> {
        let credentials = Credentials::new(&config.access_key, config.secret_key.expose(), None, None, "enclii");
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(true);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let store = ArtefactStore {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
        };
        if store.client.head_bucket().bucket(&store.bucket).send().await.is_err() {
            store
                .client
                .create_bucket()
                .bucket(&store.bucket)
                .send()
                .await
                .map_err(|e| {
                    s3_error(
                        "create bucket",
                        &store.bucket,
                        aws_sdk_s3::error::DisplayErrorContext(e),
                    )
                })?;
        }
        Ok(store)
    }

    /// Stores `body` under `key`; returns its `s3://bucket/key` URI.
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<String, StepError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error("upload of", key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(self.uri(key))
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StepError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error("download of", key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| s3_error("download of", key, e))?;
        Ok(bytes.into_bytes().to_vec())
    }

    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}
