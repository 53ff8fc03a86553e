//! The instance side of RPC on RabbitMQ: consuming the service's queue and
//! the instance's own, answering each request to its `reply_to`.

use super::*;

/// A served instance.
#[derive(Debug)]
pub(crate) struct AmqpServed {
    stop: CancellationToken,
    in_flight: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    endpoint: String,
}

impl Served for AmqpServed {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stop.cancel();
            let deadline = tokio::time::Instant::now() + grace;
            while self.in_flight.load(Ordering::Acquire) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        })
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
}

struct Serving {
    channel: Channel,
    consumers: Vec<Consumer>,
    tags: Vec<String>,
}

async fn setup(
    ch: Channel,
    exchange: &str,
    info: &InstanceInfo,
    prefetch: u16,
) -> Result<Serving, Error> {
    let fail = |what: &str, e: lapin::Error| amqp_error(what, &e);
    events::declare_exchange(&ch, exchange).await?;
    let shared = service_queue(exchange, &info.service);
    let own = instance_queue(exchange, &info.service, &info.instance);
    ch.queue_declare(
        shared.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| fail("declare the service queue", e))?;
    ch.queue_bind(
        shared.as_str().into(),
        exchange.into(),
        format!("{}.*", info.service).as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| fail("bind the service queue", e))?;
    ch.queue_declare(
        own.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| fail("declare the instance queue", e))?;
    ch.queue_bind(
        own.as_str().into(),
        exchange.into(),
        DISCOVER.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| fail("bind the instance queue", e))?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| fail("set the prefetch", e))?;
    let mut consumers = Vec::new();
    let mut tags = Vec::new();
    for (queue, kind) in [(&shared, "svc"), (&own, "own")] {
        let tag = format!("muster-{kind}-{}", info.instance);
        consumers.push(
            ch.basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| fail("consume requests", e))?,
        );
        tags.push(tag);
    }
    Ok(Serving {
        channel: ch,
        consumers,
        tags,
    })
}

pub(crate) async fn serve(
    inner: Arc<Inner>,
    registration: Registration,
    dispatch: Arc<dyn Dispatch>,
) -> Result<AmqpServed, Error> {
    let mut info = registration.info;
    let exchange = inner.options.exchange.clone();
    info.endpoint = instance_queue(&exchange, &info.service, &info.instance);
    let prefetch = u16::try_from(registration.max_in_flight.clamp(1, 65_535)).unwrap_or(u16::MAX);
    // The first set-up fails the start: a service told to use a broker it
    // cannot reach says so. Later ones retry for ever.
    let (_, ch) = inner.link.channel().await?;
    let first = setup(ch, &exchange, &info, prefetch).await?;
    let stop = CancellationToken::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let endpoint = info.endpoint.clone();
    let task = tokio::spawn(serve_loop(
        inner,
        Arc::new(info),
        prefetch,
        dispatch,
        first,
        stop.clone(),
        in_flight.clone(),
    ));
    Ok(AmqpServed {
        stop,
        in_flight,
        task,
        endpoint,
    })
}

async fn serve_loop(
    inner: Arc<Inner>,
    info: Arc<InstanceInfo>,
    prefetch: u16,
    dispatch: Arc<dyn Dispatch>,
    first: Serving,
    stop: CancellationToken,
    in_flight: Arc<AtomicUsize>,
) {
    let exchange = inner.options.exchange.clone();
    let mut next = Some(first);
    loop {
        let serving = match next.take() {
            Some(s) => s,
            None => {
                let got = inner
                    .link
                    .with_retry(&stop, "serving requests", |_, ch| {
                        let (exchange, info) = (exchange.clone(), info.clone());
                        async move { setup(ch, &exchange, &info, prefetch).await }
                    })
                    .await;
                match got {
                    Some(s) => {
                        tracing::info!(service = %info.service, "serving requests again after a broker reconnect");
                        s
                    }
                    None => break,
                }
            }
        };
        let Serving {
            channel,
            consumers,
            tags,
        } = serving;
        let mut deliveries = futures_util::stream::select_all(consumers);
        loop {
            let d = tokio::select! {
                () = stop.cancelled() => {
                    for tag in &tags {
                        let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    }
                    // Wait for the requests being answered, then close:
                    // deliveries not yet started go back to the queue.
                    while in_flight.load(Ordering::Acquire) > 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let _ = channel.close(0, "muster: instance stopped".into()).await;
                    return;
                }
                d = deliveries.next() => d,
            };
            match d {
                Some(Ok(d)) => {
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    let (inner, info, dispatch, channel, in_flight) = (
                        inner.clone(),
                        info.clone(),
                        dispatch.clone(),
                        channel.clone(),
                        in_flight.clone(),
                    );
                    tokio::spawn(async move {
                        answer(&inner, &info, &*dispatch, &channel, d).await;
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "request consumer failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("request consumer ended; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Serves one delivery: answers it (when it has a `reply_to`), then acks.
async fn answer(
    inner: &Inner,
    info: &InstanceInfo,
    dispatch: &dyn Dispatch,
    ch: &Channel,
    d: Delivery,
) {
    let reply_to = d
        .properties
        .reply_to()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    let correlation = d
        .properties
        .correlation_id()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    let reply = if d.routing_key.as_str() == DISCOVER {
        let mut h = Header::new(Kind::Reply);
        h.id = correlation.clone().unwrap_or_default();
        Some(Envelope::new(
            h,
            serde_json::to_vec(info).unwrap_or_default(),
        ))
    } else {
        let request = incoming_request(&d, &info.service, correlation.as_deref());
        // `None` for a notification: no reply.
        if d.data.len() > inner.options.max_message_size {
            Some(jsonrpc::error_envelope(
                &request.header,
                &RpcError::too_large(d.data.len(), inner.options.max_message_size),
            ))
        } else {
            dispatch.dispatch(request).await
        }
    };
    if let (Some(reply), Some(to)) = (reply, reply_to) {
        let mut props =
            BasicProperties::default().with_content_type(content_type(&reply.header).into());
        if let Some(c) = &correlation {
            props = props.with_correlation_id(c.as_str().into());
        }
        props = with_header(props, &reply.header);
        let sent = ch
            .basic_publish(
                "".into(),
                to.as_str().into(),
                BasicPublishOptions::default(),
                &reply.body,
                props,
            )
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot send a reply; the caller will time out");
        }
    }
    if let Err(e) = d.ack(BasicAckOptions::default()).await {
        tracing::debug!(error = %e, "ack of a request failed (the channel went away)");
    }
}

/// The request of a delivery: its muster header, or one rebuilt from the
/// routing key and properties for a plain AMQP client.
fn incoming_request(d: &Delivery, service: &str, correlation: Option<&str>) -> Envelope {
    if let Some(h) = read_header(&d.properties)
        && h.kind == Kind::Request
    {
        return Envelope::new(h, d.data.clone());
    }
    let method = d
        .routing_key
        .as_str()
        .strip_prefix(service)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(str::to_owned)
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&d.data)
                .ok()?
                .get("method")?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let id = correlation.map_or_else(muster_core::id::short_id, str::to_owned);
    let mut header = Header::request(id, service, &method);
    if let Some(ct) = d.properties.content_type()
        && ct.as_str().contains("msgpack")
    {
        header.content_type = Some("application/msgpack".into());
    }
    header.deadline_ms = d
        .properties
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().parse().ok());
    Envelope::new(header, d.data.clone())
}
