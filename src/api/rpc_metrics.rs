//! gRPC call latency per method: a tower layer on the tonic server that times each call from
//! request to response headers (for unary RPCs: the whole call) into the histogram the
//! composition root registered (`metrics::RpcLatency`), rendered by `/metrics`.

use crate::metrics::RpcLatency;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;

/// The tower layer that feeds [`RpcLatency`].
#[derive(Clone)]
pub struct RpcLatencyLayer(pub RpcLatency);

impl<S> tower::Layer<S> for RpcLatencyLayer {
    type Service = RpcLatencyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcLatencyService {
            inner,
            latency: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcLatencyService<S> {
    inner: S,
    latency: RpcLatency,
}

impl<S, B> tower::Service<http::Request<B>> for RpcLatencyService<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service that was polled ready handles this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let latency = self.latency.clone();
        let method = request.uri().path().to_string();
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await;
            latency.observe(&method, started.elapsed().as_secs_f64());
            response
        })
    }
}
