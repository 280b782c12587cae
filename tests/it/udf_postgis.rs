//! floe's geometry functions give PostGIS's own answers on the same input.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use datafusion::prelude::SessionContext;
use operators::{GeometryOptions, TransformOptions};
use tokio_postgres::Client;

use crate::support::*;

/// Inputs covering each function: (GeoJSON, WKT) of the same geometry.
const SHAPES: &[(&str, &str)] = &[
    (
        r#"{"type":"Polygon","coordinates":[[[-95.1,29.5],[-95.09,29.5],[-95.09,29.51],[-95.1,29.51],[-95.1,29.5]]]}"#,
        "POLYGON((-95.1 29.5,-95.09 29.5,-95.09 29.51,-95.1 29.51,-95.1 29.5))",
    ),
    (
        r#"{"type":"Polygon","coordinates":[[[-95,30],[-94.9,30],[-94.9,30.1],[-95,30.1],[-95,30]],[[-94.97,30.03],[-94.97,30.06],[-94.93,30.06],[-94.93,30.03],[-94.97,30.03]]]}"#,
        "POLYGON((-95 30,-94.9 30,-94.9 30.1,-95 30.1,-95 30),(-94.97 30.03,-94.97 30.06,-94.93 30.06,-94.93 30.03,-94.97 30.03))",
    ),
    (
        r#"{"type":"MultiPolygon","coordinates":[[[[-95.5,29.2],[-95.49,29.2],[-95.495,29.21],[-95.5,29.2]]],[[[-95.4,29.2],[-95.39,29.2],[-95.395,29.21],[-95.4,29.2]]]]}"#,
        "MULTIPOLYGON(((-95.5 29.2,-95.49 29.2,-95.495 29.21,-95.5 29.2)),((-95.4 29.2,-95.39 29.2,-95.395 29.21,-95.4 29.2)))",
    ),
    (
        r#"{"type":"LineString","coordinates":[[-95.3,29.3],[-95.2999,29.3004],[-95.2995,29.3001],[-95.299,29.301],[-95.295,29.3015],[-95.2901,29.3099]]}"#,
        "LINESTRING(-95.3 29.3,-95.2999 29.3004,-95.2995 29.3001,-95.299 29.301,-95.295 29.3015,-95.2901 29.3099)",
    ),
    (r#"{"type":"Point","coordinates":[-94.5,30.5]}"#, "POINT(-94.5 30.5)"),
    // Clockwise: PostGIS measures a ring whichever way it turns.
    (
        r#"{"type":"Polygon","coordinates":[[[-95.1,29.6],[-95.1,29.61],[-95.09,29.61],[-95.09,29.6],[-95.1,29.6]]]}"#,
        "POLYGON((-95.1 29.6,-95.1 29.61,-95.09 29.61,-95.09 29.6,-95.1 29.6))",
    ),
];

async fn ours(sql: &str) -> arrow::record_batch::RecordBatch {
    let ctx: SessionContext = operators::session_context(&TransformOptions {
        batch_size: 1024,
        geometry: GeometryOptions::default(),
    });
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

async fn postgis_bytes(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<u8> {
    client.query_one(sql, params).await.unwrap().get(0)
}

fn values_sql(column: &str, values: &[&str]) -> String {
    let rows: Vec<String> = values
        .iter()
        .map(|v| format!("('{}')", v.replace('\'', "''")))
        .collect();
    format!(
        "(SELECT column1 AS {column} FROM (VALUES {}))",
        rows.join(", ")
    )
}

#[tokio::test]
async fn constructors_produce_postgis_bytes() {
    let url = fresh_db("udf_constructors").await;
    let client = connect(&url).await;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS postgis")
        .await
        .unwrap();

    // st_point + st_makeline: byte-identical EWKB.
    let b = ours("SELECT st_makeline(st_point(-95.25, 29.75, 4326), st_point(-95.2, 29.8, 4326)), st_point(-95.25, 29.75, 4326)").await;
    let pg_line = postgis_bytes(
        &client,
        "SELECT ST_AsEWKB(ST_MakeLine(ST_SetSRID(ST_MakePoint(-95.25, 29.75), 4326), ST_SetSRID(ST_MakePoint(-95.2, 29.8), 4326)))",
        &[],
    )
    .await;
    assert_eq!(b.column(0).as_binary::<i32>().value(0), pg_line.as_slice());
    let pg_point = postgis_bytes(
        &client,
        "SELECT ST_AsEWKB(ST_Point(-95.25, 29.75, 4326))",
        &[],
    )
    .await;
    assert_eq!(b.column(1).as_binary::<i32>().value(0), pg_point.as_slice());

    // Parsers: GeoJSON, WKT and WKB give the bytes PostGIS gives.
    let geojson: Vec<&str> = SHAPES.iter().map(|s| s.0).collect();
    let wkt: Vec<&str> = SHAPES.iter().map(|s| s.1).collect();
    let from_json = ours(&format!(
        "SELECT st_geomfromgeojson(j) FROM {}",
        values_sql("j", &geojson)
    ))
    .await;
    let from_wkt = ours(&format!(
        "SELECT st_geomfromtext(w, 4326), st_multi(st_geomfromtext(w, 4326)) FROM {}",
        values_sql("w", &wkt)
    ))
    .await;
    for (i, (j, w)) in SHAPES.iter().enumerate() {
        let pg = postgis_bytes(&client, "SELECT ST_AsEWKB(ST_GeomFromGeoJSON($1))", &[j]).await;
        assert_eq!(
            from_json.column(0).as_binary::<i32>().value(i),
            pg.as_slice(),
            "geojson {i}"
        );
        let pg = postgis_bytes(&client, "SELECT ST_AsEWKB(ST_GeomFromText($1, 4326))", &[w]).await;
        assert_eq!(
            from_wkt.column(0).as_binary::<i32>().value(i),
            pg.as_slice(),
            "wkt {i}"
        );
        let pg = postgis_bytes(
            &client,
            "SELECT ST_AsEWKB(ST_Multi(ST_GeomFromText($1, 4326)))",
            &[w],
        )
        .await;
        assert_eq!(
            from_wkt.column(1).as_binary::<i32>().value(i),
            pg.as_slice(),
            "multi {i}"
        );
        let wkb = postgis_bytes(&client, "SELECT ST_AsBinary(ST_GeomFromText($1))", &[w]).await;
        let hex: String = wkb.iter().map(|b| format!("{b:02x}")).collect();
        let from_wkb = ours(&format!(
            "SELECT st_geomfromwkb(decode('{hex}', 'hex'), 4326)"
        ))
        .await;
        assert_eq!(
            from_json.column(0).as_binary::<i32>().value(i),
            from_wkb.column(0).as_binary::<i32>().value(0),
            "wkb {i}"
        );
    }
}

#[tokio::test]
async fn measures_and_processing_agree_with_postgis() {
    let url = fresh_db("udf_measures").await;
    let client = connect(&url).await;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS postgis")
        .await
        .unwrap();
    let wkt: Vec<&str> = SHAPES.iter().map(|s| s.1).collect();
    let b = ours(&format!(
        "SELECT st_area(g), st_length(g), st_centroid(g), st_simplify(g, 0.0003) \
         FROM (SELECT st_geomfromtext(w, 4326) AS g FROM {})",
        values_sql("w", &wkt)
    ))
    .await;
    for (i, w) in wkt.iter().enumerate() {
        let row = client
            .query_one(
                "SELECT ST_Area(g::geography), ST_Length(g::geography), ST_AsEWKB(ST_Centroid(g)), ST_AsEWKB(ST_Simplify(g, 0.0003)) \
                 FROM (SELECT ST_GeomFromText($1, 4326) AS g) s",
                &[w],
            )
            .await
            .unwrap();
        let (area, length): (f64, f64) = (row.get(0), row.get(1));
        let our_area = b.column(0).as_primitive::<Float64Type>().value(i);
        let our_length = b.column(1).as_primitive::<Float64Type>().value(i);
        assert!(
            (our_area - area).abs() <= 1e-6 * area.max(1.0),
            "area {i}: ours {our_area} postgis {area}"
        );
        assert!(
            (our_length - length).abs() <= 1e-6 * length.max(1.0),
            "length {i}: ours {our_length} postgis {length}"
        );
        let (c, s): (Vec<u8>, Vec<u8>) = (row.get(2), row.get(3));
        let ours_c = operators::ewkb::point_xy(b.column(2).as_binary::<i32>().value(i)).unwrap();
        let pg_c = operators::ewkb::point_xy(&c).unwrap();
        assert!(
            (ours_c.0 - pg_c.0).abs() < 1e-12 && (ours_c.1 - pg_c.1).abs() < 1e-12,
            "centroid {i}: {ours_c:?} vs {pg_c:?}"
        );
        assert_eq!(
            b.column(3).as_binary::<i32>().value(i),
            s.as_slice(),
            "simplify {i}"
        );
        assert!(!b.column(3).is_null(i));
    }
}
