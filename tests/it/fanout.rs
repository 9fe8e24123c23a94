//! One table fanned out to a webhook, an AMQP exchange and a Kafka topic at
//! once: each consumer sees the same payloads, in commit order.
use crate::common::amqp::Rabbit;
use crate::common::kafka::Tansu;
use crate::common::{config, eventually_true, start_installed, Hook, TestDb};

#[tokio::test]
async fn one_table_reaches_a_webhook_rabbitmq_and_kafka() {
    let (hook, rabbit, tansu) = (
        Hook::start().await,
        Rabbit::new().await,
        Tansu::start().await,
    );
    let topic = format!("skor_test_{:016x}", rand::random::<u64>());
    tansu.create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"orders\"\n\
             [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
             {}\
             [sink.log]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
             [[route]]\ntables = [\"public.orders\"]\nsinks = [\"hook\", \"bus\", \"log\"]\n",
            hook.url(),
            rabbit.sink(""),
            tansu.brokers()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO orders VALUES (1, 'new')").await;
    db.exec("UPDATE orders SET status = 'paid' WHERE id = 1")
        .await;
    db.exec("DELETE FROM orders WHERE id = 1").await;
    let expected = [
        r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"status":"new"}}"#,
        r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"status":"paid"}}"#,
        r#"{"table" : "orders", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"status":"paid"}}"#,
    ];
    let webhook: Vec<String> = hook.wait_for(3).await.into_iter().map(|r| r.body).collect();
    assert_eq!(webhook, expected);
    let amqp: Vec<String> = rabbit.take(3).await.into_iter().map(|m| m.body).collect();
    assert_eq!(amqp, expected);
    let kafka: Vec<String> = tansu
        .consume(&topic, 1, 3)
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(kafka, expected);
    for sink in ["hook", "bus", "log"] {
        let stats = daemon.stats.sink(sink).unwrap();
        eventually_true(sink, || stats.delivered.get() == 3).await;
    }
    assert_eq!(daemon.stop().await.undelivered, 0);
    rabbit.delete().await;
}
