//! Pushes: blobs (monolithic, after a HEAD says the registry lacks them) and manifests, on the hosts
//! that may push.

use super::*;

impl Repository {
    /// Uploads a blob held in memory (checked against its descriptor first).
    pub async fn push_blob(&self, desc: &Descriptor, data: Bytes) -> Result<(), RegistryError> {
        verify(desc, &data)?;
        self.push_blob_body(desc, reqwest::Body::from(data)).await
    }

    /// Uploads a blob in one streamed request (POST to start the upload, which also answers
    /// any authentication challenge, then PUT with the digest). The registry checks the digest.
    pub async fn push_blob_body(
        &self,
        desc: &Descriptor,
        body: reqwest::Body,
    ) -> Result<(), RegistryError> {
        let hosts = self.hosts_with(|c| c.push);
        let Some(h) = hosts.first() else {
            return Err(RegistryError::Config(format!(
                "no endpoint of {} may be pushed to",
                self.reference.domain
            )));
        };
        let url = h.url(&format!("/{}/blobs/uploads/", self.reference.path));
        let resp = self.send(h, Method::POST, &url, &[], None, true).await?;
        let resp = check_status(resp, "POST", &url, desc.digest.as_str()).await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Invalid(format!("POST {url}: no Location")))?
            .to_string();
        let mut put = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else {
            format!("{}://{}{}", h.scheme, h.authority, location)
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={}", desc.digest));
        let client = self.client(h)?;
        let mut req = client
            .put(&put)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, desc.size.to_string())
            .body(body);
        for (k, v) in h.headers.iter().chain(&self.session.headers) {
            req = req.header(k.as_str(), v.as_str());
        }
        let auth = self
            .inner
            .auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(h.authority.clone(), self.reference.path.clone(), true))
            .cloned();
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(|e| transport(&put, &e))?;
        check_status(resp, "PUT", &put, desc.digest.as_str()).await?;
        Ok(())
    }

    /// Uploads a manifest or index under `tag` (or under its digest).
    pub async fn push_manifest(
        &self,
        desc: &Descriptor,
        data: Bytes,
        tag: Option<&str>,
    ) -> Result<(), RegistryError> {
        verify(desc, &data)?;
        let hosts = self.hosts_with(|c| c.push);
        let Some(h) = hosts.first() else {
            return Err(RegistryError::Config(format!(
                "no endpoint of {} may be pushed to",
                self.reference.domain
            )));
        };
        let object = tag.map_or_else(|| desc.digest.to_string(), str::to_string);
        let url = h.url(&format!("/{}/manifests/{object}", self.reference.path));
        let headers = [(CONTENT_TYPE.as_str(), desc.media_type.clone())];
        let resp = self
            .send(h, Method::PUT, &url, &headers, Some(data), true)
            .await?;
        check_status(resp, "PUT", &url, desc.digest.as_str()).await?;
        Ok(())
    }
}
