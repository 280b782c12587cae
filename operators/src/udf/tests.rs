use std::sync::atomic::Ordering;

use arrow::array::{Array, BinaryArray, Float64Array};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use schemas::config::OnInvalidGeometry;
use schemas::geometry::{GeometryInfo, GeometryKind};

use super::*;
use crate::error::GeometryError;
use crate::ewkb;

fn ctx(on_invalid: OnInvalidGeometry) -> (SessionContext, GeometryOptions) {
    let options = GeometryOptions {
        on_invalid,
        ..Default::default()
    };
    let ctx = SessionContext::new();
    register_all(&ctx, &options);
    (ctx, options)
}

async fn query(ctx: &SessionContext, sql: &str) -> Result<RecordBatch> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(arrow::compute::concat_batches(
        &batches[0].schema(),
        &batches,
    )?)
}

fn geom_column(b: &RecordBatch, i: usize) -> &BinaryArray {
    b.column(i).as_any().downcast_ref::<BinaryArray>().unwrap()
}

#[tokio::test]
async fn point_and_makeline_build_ewkb_with_srid_and_tag_the_field() {
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    let b = query(
        &ctx,
        "SELECT st_makeline(st_point(-95.0, 29.0, 4326), st_point(-94.5, 29.5, 4326)) AS geom",
    )
    .await
    .unwrap();
    let info = GeometryInfo::from_field(b.schema().field(0)).unwrap();
    assert_eq!(
        info,
        GeometryInfo {
            kind: GeometryKind::LineString,
            srid: Some(4326)
        }
    );
    let g = geom_column(&b, 0).value(0);
    let h = ewkb::read_header(g).unwrap();
    assert_eq!(
        (h.kind(), h.srid),
        (Some(GeometryKind::LineString), Some(4326))
    );
    match ewkb::to_geo(g).unwrap() {
        geo::Geometry::LineString(l) => {
            let pts: Vec<_> = l.coords().map(|c| (c.x, c.y)).collect();
            assert_eq!(pts, vec![(-95.0, 29.0), (-94.5, 29.5)]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn nulls_propagate() {
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    let b = query(
        &ctx,
        "SELECT st_point(CAST(NULL AS DOUBLE), 1.0) AS a, st_geomfromgeojson(CAST(NULL AS VARCHAR)) AS b, \
         st_area(st_geomfromtext(CAST(NULL AS VARCHAR))) AS c",
    )
    .await
    .unwrap();
    assert!((0..3).all(|i| b.column(i).is_null(0)));
}

#[tokio::test]
async fn geojson_wkt_and_wkb_parse_to_the_same_polygon() {
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    let b = query(
        &ctx,
        r#"SELECT
            st_geomfromgeojson('{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}') AS a,
            st_geomfromtext('POLYGON((0 0,1 0,1 1,0 1,0 0))', 4326) AS b,
            st_geomfromwkb(st_geomfromtext('SRID=4326;POLYGON((0 0,1 0,1 1,0 1,0 0))')) AS c"#,
    )
    .await
    .unwrap();
    let a = geom_column(&b, 0).value(0).to_vec();
    assert_eq!(ewkb::read_header(&a).unwrap().srid, Some(4326));
    assert_eq!(geom_column(&b, 1).value(0), a.as_slice());
    assert_eq!(geom_column(&b, 2).value(0), a.as_slice());
}

#[tokio::test]
async fn multi_centroid_and_setsrid_follow_postgis() {
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    let b = query(
        &ctx,
        "SELECT st_multi(st_geomfromtext('POLYGON((0 0,2 0,2 2,0 2,0 0))', 4326)) AS m, \
                st_centroid(st_geomfromtext('POLYGON((0 0,2 0,2 2,0 2,0 0))', 4326)) AS c, \
                st_setsrid(st_point(1.0, 2.0), 3857) AS s, \
                st_multi(st_point(1.0, 2.0, 4326)) AS mp",
    )
    .await
    .unwrap();
    let schema = b.schema();
    // WKT's type is only known per value; a point's is known when planning.
    assert_eq!(
        GeometryInfo::from_field(schema.field(0)).unwrap().kind,
        GeometryKind::Geometry
    );
    assert_eq!(
        GeometryInfo::from_field(schema.field(3)).unwrap().kind,
        GeometryKind::MultiPoint
    );
    assert_eq!(
        ewkb::read_header(geom_column(&b, 0).value(0))
            .unwrap()
            .kind(),
        Some(GeometryKind::MultiPolygon)
    );
    assert_eq!(
        ewkb::point_xy(geom_column(&b, 1).value(0)),
        Some((1.0, 1.0))
    );
    assert_eq!(
        GeometryInfo::from_field(schema.field(2)).unwrap().srid,
        Some(3857)
    );
    assert_eq!(
        ewkb::read_header(geom_column(&b, 2).value(0)).unwrap().srid,
        Some(3857)
    );
}

#[tokio::test]
async fn geodesic_length_of_one_degree_of_latitude() {
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    let b = query(
        &ctx,
        "SELECT st_length(st_geomfromtext('LINESTRING(-95 29, -95 30)', 4326)) AS l",
    )
    .await
    .unwrap();
    let l = b
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .value(0);
    // One degree of latitude near 29.5°N on WGS84 is about 110.85 km.
    assert!((l - 110_850.0).abs() < 100.0, "{l}");
}

#[tokio::test]
async fn invalid_input_names_the_value_or_becomes_null_and_is_counted() {
    let sql = "SELECT st_geomfromgeojson(column1) AS g FROM (VALUES ('{\"type\":\"Point\",\"coordinates\":[1,2]}'), ('not json'))";
    let (strict, _) = ctx(OnInvalidGeometry::Error);
    let err = query(&strict, sql).await.unwrap_err();
    let found = datafusion_error_geometry(&err).expect("a GeometryError in the chain");
    assert_eq!(found.row_in_batch, 1);
    assert!(found.value.contains("not json"), "{}", found.value);

    let (lenient, options) = ctx(OnInvalidGeometry::Null);
    let b = query(&lenient, sql).await.unwrap();
    assert!(!b.column(0).is_null(0) && b.column(0).is_null(1));
    assert_eq!(options.invalid_count.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_batch_split_across_cores_keeps_row_order_and_reports_the_first_bad_row() {
    // 5,000 GeoJSON points in one batch (several pieces run in parallel),
    // the ones at rows 1,200 and 4,500 broken
    let bad = |i: usize| i == 1_200 || i == 4_500;
    let json: Vec<String> = (0..5_000)
        .map(|i| match bad(i) {
            true => format!("broken {i}"),
            false => format!("{{\"type\":\"Point\",\"coordinates\":[{i},{}]}}", i % 90),
        })
        .collect();
    let table = arrow::record_batch::RecordBatch::try_from_iter([(
        "j",
        std::sync::Arc::new(arrow::array::StringArray::from(json)) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let sql = "SELECT st_geomfromgeojson(j) AS g, st_area(st_geomfromgeojson(j)) AS a FROM t";
    let register = |ctx: &SessionContext| {
        ctx.register_batch("t", table.clone()).unwrap();
    };

    let (strict, _) = ctx(OnInvalidGeometry::Error);
    register(&strict);
    let err = query(&strict, sql).await.unwrap_err();
    let found = datafusion_error_geometry(&err).expect("a GeometryError in the chain");
    assert_eq!(
        found.row_in_batch, 1_200,
        "the first bad row, not whichever piece ended first"
    );
    assert!(found.value.contains("broken 1200"), "{}", found.value);

    let (lenient, options) = ctx(OnInvalidGeometry::Null);
    register(&lenient);
    let b = query(&lenient, sql).await.unwrap();
    assert_eq!(b.num_rows(), 5_000);
    let g = geom_column(&b, 0);
    for i in 0..5_000 {
        assert_eq!(g.is_null(i), bad(i), "row {i}");
        if !bad(i) {
            let p = ewkb::point_xy(g.value(i)).unwrap();
            assert_eq!(p, (i as f64, (i % 90) as f64), "row {i} in its place");
        }
    }
    let areas = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(areas.null_count(), 2);
    // (DataFusion computes st_geomfromgeojson(j) once for both columns)
    assert_eq!(options.invalid_count.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn wrong_argument_types_fail_at_plan_time() {
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    let err = ctx
        .sql("SELECT st_point('a', 'b')")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("st_point(double, double, [srid])"), "{err}");
}

fn datafusion_error_geometry(e: &DataFusionError) -> Option<GeometryError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(g) = err.downcast_ref::<GeometryError>() {
            return Some(g.clone());
        }
        cur = err.source();
    }
    None
}

#[tokio::test]
async fn utf8view_text_is_read_in_place_with_the_same_result() {
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    let b = query(
        &ctx,
        r#"SELECT st_geomfromgeojson(j) AS a, st_geomfromgeojson(arrow_cast(j, 'Utf8View')) AS b,
                  st_geomfromtext(arrow_cast(w, 'Utf8View'), 4326) AS c
           FROM (VALUES ('{"type":"Point","coordinates":[1,2]}', 'POINT(1 2)'), (NULL, NULL)) AS t(j, w)"#,
    )
    .await
    .unwrap();
    assert_eq!(geom_column(&b, 0).value(0), geom_column(&b, 1).value(0));
    assert_eq!(geom_column(&b, 0).value(0), geom_column(&b, 2).value(0));
    assert!(b.column(1).is_null(1) && b.column(2).is_null(1));
}

#[tokio::test]
async fn to_geography_reads_every_snowflake_output_format_to_one_ewkb() {
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    let want = query(
        &ctx,
        r#"SELECT st_geomfromgeojson('{"type":"Polygon","coordinates":[[[-96,32],[-95,32],[-95,33],[-96,32]]]}') AS g"#,
    )
    .await
    .unwrap();
    let want = geom_column(&want, 0).value(0).to_vec();
    for (format, sql) in [
        ("GeoJSON", r#"SELECT to_geography('{"type":"Polygon","coordinates":[[[-96,32],[-95,32],[-95,33],[-96,32]]]}') AS g"#),
        ("WKT", "SELECT to_geography('POLYGON((-96 32,-95 32,-95 33,-96 32))') AS g"),
        ("EWKT", "SELECT to_geography('SRID=4326;POLYGON((-96 32,-95 32,-95 33,-96 32))') AS g"),
        ("WKB", "SELECT to_geography(st_geomfromwkb(st_geomfromtext('POLYGON((-96 32,-95 32,-95 33,-96 32))'))) AS g"),
        ("EWKB", "SELECT to_geography(st_geomfromtext('POLYGON((-96 32,-95 32,-95 33,-96 32))', 4326)) AS g"),
        ("Utf8View", "SELECT to_geography(arrow_cast('POLYGON((-96 32,-95 32,-95 33,-96 32))', 'Utf8View')) AS g"),
    ] {
        let b = query(&ctx, sql).await.unwrap();
        assert_eq!(geom_column(&b, 0).value(0), want.as_slice(), "{format}");
        let info = GeometryInfo::from_field(b.schema().field(0)).unwrap();
        assert_eq!(info.srid, Some(4326), "{format}");
    }
    let b = query(&ctx, "SELECT to_geography(CAST(NULL AS VARCHAR)) AS g")
        .await
        .unwrap();
    assert!(b.column(0).is_null(0));
    let e = query(&ctx, "SELECT to_geography('POLYGON((-96 32') AS g")
        .await
        .unwrap_err();
    let g = datafusion_error_geometry(&e).expect("a geometry error");
    assert!(g.value.contains("POLYGON((-96 32"), "{g:?}");
    assert!(query(&ctx, "SELECT to_geography(42) AS g").await.is_err());
}

#[tokio::test]
async fn points_and_lines_made_across_cores_keep_every_row_in_its_place() {
    // 5,000 rows in one batch (five pieces, made in parallel),
    // every 1,000th with a NULL coordinate
    let xs: Vec<Option<f64>> = (0..5_000)
        .map(|i| (i % 1_000 != 999).then_some(i as f64))
        .collect();
    let table = RecordBatch::try_from_iter([(
        "x",
        std::sync::Arc::new(Float64Array::from(xs)) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let (ctx, _) = ctx(OnInvalidGeometry::Error);
    ctx.register_batch("t", table).unwrap();
    let b = query(
        &ctx,
        "SELECT st_setsrid(st_makeline(st_point(x, 10.0), st_point(x + 0.5, 11.0)), 4326) AS g FROM t",
    )
    .await
    .unwrap();
    assert_eq!(b.num_rows(), 5_000);
    let g = geom_column(&b, 0);
    for i in 0..5_000 {
        assert_eq!(g.is_null(i), i % 1_000 == 999, "row {i}");
        if g.is_null(i) {
            continue;
        }
        assert_eq!(ewkb::read_header(g.value(i)).unwrap().srid, Some(4326));
        match ewkb::to_geo(g.value(i)).unwrap() {
            geo::Geometry::LineString(l) => {
                let pts: Vec<_> = l.coords().map(|c| (c.x, c.y)).collect();
                let x = i as f64;
                assert_eq!(
                    pts,
                    vec![(x, 10.0), (x + 0.5, 11.0)],
                    "row {i} in its place"
                );
            }
            other => panic!("row {i}: {other:?}"),
        }
    }
}
