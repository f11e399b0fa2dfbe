console.log("demo app");
